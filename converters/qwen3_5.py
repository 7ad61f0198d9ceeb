"""Qwen3_5ForConditionalGeneration and Qwen3_5MoeForConditionalGeneration (images; videos are refused).

Vision: Qwen3-VL's tower (converters/qwen3_vl.py) without DeepStack: HF's Qwen3.5 vision model has no DeepStack
mergers and never reads ``deepstack_visual_indexes`` (a non-empty list is refused: the checkpoint has no tensors
for it). LM: hybrid, from ``layer_types``: ``linear_attention`` layers are Gated DeltaNet
(components/gated_deltanet.py, ``blocks.{l}.linear_attn.*``), ``full_attention`` layers gated attention
(``attn_output_gate``: q_proj makes a per-head sigmoid gate, ``blocks.{l}.attn.hook_gate``) with RMS q/k norms and
partial interleaved M-RoPE (``partial_rotary_factor`` -> ``rotary_dim``). Every RMSNorm scales by (1 + w) in float32
(``norm_offset=1``) except the gated norm inside the linear layers (w). Qwen3.5-MoE: every layer's feed-forward is
top-k routed experts plus a shared expert scaled by sigmoid(shared_expert_gate(x)).

The multi-token-prediction head (``mtp.*``, ``mtp_num_hidden_layers``) is never run by HF's forward (its loader drops
it: ``_keys_to_ignore_on_load_unexpected``); its tensors are ignored BY NAME here and listed by ``hooked-vlm inspect``.
"""

from __future__ import annotations

import re
from typing import Any

from hooked_vlm.config import HookedVLMConfig, LinearAttentionConfig, TowerConfig

from ._decoder import check_rope_type, decoder_rules
from ._qwen_inputs import load_qwen_inputs
from .base import Converter, KeyMap, UnsupportedConfigError, check_fields
from .qwen3_vl import ALIASES, qwen3_vl_config, vision_rules

TEXT_FIELDS = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
               "rope_parameters", "attention_bias", "tie_word_embeddings", "layer_types", "linear_conv_kernel_dim",
               "linear_key_head_dim", "linear_value_head_dim", "linear_num_key_heads", "linear_num_value_heads"}
MOE_FIELDS = {"moe_intermediate_size", "shared_expert_intermediate_size", "num_experts_per_tok", "num_experts"}
MTP = "the multi-token-prediction head: HF's forward never runs it (its loader drops the mtp.* tensors)"
IGNORED = {"mtp_num_hidden_layers": MTP, "mtp_use_dedicated_embeddings": MTP,
           "full_attention_interval": "HF turns it into layer_types when layer_types is missing; layer_types is read",
           "mamba_ssm_dtype": "never read by HF's Qwen3.5 code (its torch path keeps the recurrent state in float32)",
           "output_router_logits": "returns the router logits / adds the auxiliary loss: training outputs only",
           "router_aux_loss_coef": "weight of the load-balancing loss, used in training only"}
PINNED = {"attn_output_gate": (True, "HF's Qwen3.5 attention always gates its output (q_proj makes the gate)"),
          "mlp_only_layers": ([], "HF's Qwen3.5-MoE gives every layer the sparse MoE block")}
HF_MROPE_SECTION = [11, 11, 10]  # Qwen3_5TextRotaryEmbedding's default
KINDS = ("linear_attention", "full_attention")


def text_config(tc: Any) -> TowerConfig:
    where = f"text_config ({tc.model_type})"
    moe = hasattr(tc, "num_experts")
    check_fields(tc, TEXT_FIELDS | (MOE_FIELDS if moe else set()), where, IGNORED, PINNED)
    rope = dict(tc.rope_parameters or {"rope_type": "default", "rope_theta": 10000.0})
    check_rope_type(rope, where)
    d_head = tc.head_dim or tc.hidden_size // tc.num_attention_heads
    rotary_dim = int(d_head * float(rope.pop("partial_rotary_factor", 1.0)))  # HF: int(head_dim * factor)
    section = list(rope.setdefault("mrope_section", list(HF_MROPE_SECTION)))
    rope["mrope_interleaved"] = True  # HF's Qwen3.5 rotary always interleaves (it never reads the flag)
    if len(section) != 3 or sum(section) != rotary_dim // 2:
        raise UnsupportedConfigError(
            f"{where}: rope_parameters.mrope_section={section} must have 3 entries summing to rotary_dim // 2 = "
            f"{rotary_dim // 2} (head_dim {d_head} x partial_rotary_factor): interleaved M-RoPE gives each (t, h, w) "
            "axis that many of the rotary frequency pairs")
    layer_types = tuple(tc.layer_types)
    bad = sorted(set(layer_types) - set(KINDS))
    if bad:
        raise UnsupportedConfigError(f"{where}: layer_types holds {bad}; HF's Qwen3.5 layers are {KINDS} only")
    linear = LinearAttentionConfig(n_key_heads=tc.linear_num_key_heads, n_value_heads=tc.linear_num_value_heads,
                                   d_key=tc.linear_key_head_dim, d_value=tc.linear_value_head_dim,
                                   conv_kernel=tc.linear_conv_kernel_dim, act_fn=tc.hidden_act, norm_eps=tc.rms_norm_eps)
    moe_fields = {}
    if moe:
        moe_fields = dict(mlp_kind="moe", n_experts=tc.num_experts, n_experts_per_tok=tc.num_experts_per_tok,
                          d_mlp_expert=tc.moe_intermediate_size, d_mlp_shared_expert=tc.shared_expert_intermediate_size,
                          shared_expert_gate=True)
    return TowerConfig(
        n_layers=tc.num_hidden_layers, d_model=tc.hidden_size, n_heads=tc.num_attention_heads,
        n_key_value_heads=tc.num_key_value_heads, d_head=d_head, d_mlp=getattr(tc, "intermediate_size", 0) or 0,
        act_fn=tc.hidden_act, gated_mlp=True, normalization_type="RMS", norm_eps=tc.rms_norm_eps, norm_offset=1.0,
        attn_bias=bool(tc.attention_bias), attn_out_bias=bool(tc.attention_bias), mlp_bias=False, causal=True,
        positional="rope", rope_parameters=rope, max_position_embeddings=tc.max_position_embeddings, qk_norm="RMS",
        rotary_dim=rotary_dim, attn_output_gate=True, layer_types=layer_types, linear_attention=linear, **moe_fields)


def qwen3_5_config(hf: Any) -> HookedVLMConfig:
    vc = hf.vision_config
    if getattr(vc, "deepstack_visual_indexes", None):
        raise UnsupportedConfigError(
            f"vision_config.deepstack_visual_indexes={list(vc.deepstack_visual_indexes)}: HF's Qwen3.5 vision model has "
            "no DeepStack mergers and never reads it, so the checkpoint has no tensors for them; remove it (or set [])")
    cfg = qwen3_vl_config(hf, make_text=text_config)
    cfg.architecture = hf.architectures[0] if getattr(hf, "architectures", None) else "Qwen3_5ForConditionalGeneration"
    return cfg


def text_rules(prefix: str) -> list[tuple[str, str]]:
    p = re.escape(prefix)
    lyr = rf"{p}\.layers\.(\d+)"
    return decoder_rules(prefix) + [
        (rf"{lyr}\.self_attn\.(q|k)_norm\.weight", r"blocks.\1.attn.\2_norm.w"),
        (rf"{lyr}\.linear_attn\.(in_proj_qkv|in_proj_z|in_proj_b|in_proj_a|out_proj|conv1d)\.weight",
         r"blocks.\1.linear_attn.\2.weight"),
        (rf"{lyr}\.linear_attn\.(dt_bias|A_log)", r"blocks.\1.linear_attn.\2"),
        (rf"{lyr}\.linear_attn\.norm\.weight", r"blocks.\1.linear_attn.norm.w"),
        (rf"{lyr}\.mlp\.gate\.weight", r"blocks.\1.mlp.router.weight"),  # MoE
        (rf"{lyr}\.mlp\.experts\.(gate_up|down)_proj", r"blocks.\1.mlp.\2_proj"),
        (rf"{lyr}\.mlp\.shared_expert\.(gate|up|down)_proj\.weight", r"blocks.\1.mlp.shared_expert.\2_proj.weight"),
        (rf"{lyr}\.mlp\.shared_expert_gate\.weight", r"blocks.\1.mlp.shared_expert_gate.weight"),
    ]


IGNORED_TENSORS = [(r"mtp\..*", MTP)]


def expert_parts(prefix: str, d_mlp_expert: int) -> list:
    """Per-expert checkpoint tensors (what save_pretrained writes and the hub holds: ``experts.{e}.gate_proj`` ...)
    into our fused ``gate_up_proj`` [expert, 2 * d_mlp, d_model] (gate rows first) and ``down_proj``, as HF's
    conversion_mapping (qwen2_moe: MergeModulelist + Concatenate) fuses them on load."""
    p, d = re.escape(prefix), d_mlp_expert
    half = {"gate": slice(0, d), "up": slice(d, 2 * d)}
    return [
        (rf"{p}\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate|up)_proj\.weight", r"blocks.\1.mlp.gate_up_proj",
         lambda m: (int(m[2]), half[m[3]])),
        (rf"{p}\.layers\.(\d+)\.mlp\.experts\.(\d+)\.down_proj\.weight", r"blocks.\1.mlp.down_proj", lambda m: (int(m[2]),)),
    ]


def qwen3_5_keymap(cfg: HookedVLMConfig) -> KeyMap:
    parts = expert_parts("model.language_model", cfg.text.d_mlp_expert) if cfg.text.mlp_kind == "moe" else []
    return KeyMap(aliases=ALIASES, rules=text_rules("model.language_model") + vision_rules("model.visual"),
                  ignored=list(IGNORED_TENSORS), parts=parts)


CONVERTER = Converter(
    architectures=("Qwen3_5ForConditionalGeneration", "Qwen3_5MoeForConditionalGeneration"),
    make_config=qwen3_5_config,
    make_keymap=qwen3_5_keymap,
    load_processor=load_qwen_inputs,
)
