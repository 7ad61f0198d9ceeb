"""Llama 4's language model (HF ``Llama4TextConfig`` / ``Llama4TextModel``) -> TowerConfig + key rules.

Every Llama 4 part is a TowerConfig field read by the shared components (docs/architecture.md section 4):

- ``no_rope_layers[l]`` (1 = the layer USES RoPE, HF's naming) and ``layer_types``: HF makes the RoPE layers
  ``chunked_attention`` (``attention_chunk_size``) and the NoPE layers ``full_attention``. Our ``layer_types`` copy
  HF's; ``layer_rope_parameters`` gives the NoPE layers' kind None. A config whose RoPE layers do not coincide with one
  kind is refused (one table per kind).
- RoPE on (even, odd) pairs (HF's complex ``freqs_cis``): ``rope_interleaved``.
- ``use_qk_norm``: weightless L2 (RMS) norm of q and k after RoPE on RoPE layers (``qk_l2_norm_after_rope``).
- ``attn_temperature_tuning`` / ``floor_scale`` / ``attn_scale``: NoPE layers' queries scaled by position.
- MoE on ``moe_layers`` (from ``interleave_moe_layer_step``): ``num_local_experts`` experts of width
  ``intermediate_size``, top-``num_experts_per_tok`` sigmoid routing weighting the expert input
  (``moe_router="sigmoid_topk_input"``), an ungated shared expert of width ``intermediate_size``; dense layers have
  width ``intermediate_size_mlp``. HF's fused experts are stored ``[expert, d_model, 2 * d_mlp]`` (gate columns
  first) and ``[expert, d_mlp, d_model]``; ours are the transposes.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from hooked_vlm.config import TowerConfig

from ._decoder import check_rope_type
from .base import UnsupportedConfigError, check_fields

TEXT_FIELDS = {
    "vocab_size", "hidden_size", "intermediate_size", "intermediate_size_mlp", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
    "rope_parameters", "tie_word_embeddings", "attention_bias", "num_experts_per_tok", "num_local_experts",
    "moe_layers", "interleave_moe_layer_step", "use_qk_norm", "no_rope_layers", "no_rope_layer_interval",
    "attention_chunk_size", "layer_types", "attn_temperature_tuning", "floor_scale", "attn_scale",
}
IGNORED = {
    "output_router_logits": "only adds the auxiliary load-balancing loss / router logits to HF's outputs",
    "router_aux_loss_coef": "training loss coefficient; the forward never reads it",
    "router_jitter_noise": "HF's Llama4Router never reads it (no jitter in the forward)",
}
KINDS = ("chunked_attention", "full_attention")


def llama4_text_config(tc: Any) -> TowerConfig:
    where = f"text_config ({tc.model_type})"
    check_fields(tc, TEXT_FIELDS, where, IGNORED)
    rope = dict(tc.rope_parameters or {"rope_type": "default", "rope_theta": 500000.0})
    check_rope_type(rope, where)
    n = tc.num_hidden_layers
    layer_types = tuple(tc.layer_types)
    bad = sorted(set(layer_types) - set(KINDS))
    if bad or len(layer_types) != n:
        raise UnsupportedConfigError(f"{where}: layer_types={list(layer_types)} must list one of {KINDS} per layer")
    uses_rope = [bool(r) for r in tc.no_rope_layers]
    rope_kinds = {k for k, r in zip(layer_types, uses_rope) if r}
    nope_kinds = {k for k, r in zip(layer_types, uses_rope) if not r}
    if rope_kinds & nope_kinds:
        raise UnsupportedConfigError(
            f"{where}: no_rope_layers={list(tc.no_rope_layers)} and layer_types={list(layer_types)} give the kind(s) "
            f"{sorted(rope_kinds & nope_kinds)} both RoPE and NoPE layers; RoPE is chosen per layer kind here, so the "
            "RoPE layers must be exactly the layers of one kind (HF's default: RoPE layers chunked, NoPE full)")
    if "chunked_attention" in layer_types and tc.attention_chunk_size is None:
        raise UnsupportedConfigError(f"{where}: layer_types has chunked_attention layers but attention_chunk_size is None")
    moe_layers = tuple(tc.moe_layers)
    return TowerConfig(
        n_layers=n, d_model=tc.hidden_size, n_heads=tc.num_attention_heads, n_key_value_heads=tc.num_key_value_heads,
        d_head=tc.head_dim, d_mlp=tc.intermediate_size_mlp, act_fn=tc.hidden_act, gated_mlp=True,
        normalization_type="RMS", norm_eps=tc.rms_norm_eps, attn_bias=bool(tc.attention_bias),
        attn_out_bias=bool(tc.attention_bias), mlp_bias=False, causal=True, positional="rope", rope_parameters=rope,
        max_position_embeddings=tc.max_position_embeddings, rope_interleaved=True, layer_types=layer_types,
        layer_rope_parameters={k: (dict(rope) if k in rope_kinds else None) for k in set(layer_types)},
        attention_chunk_size=tc.attention_chunk_size if "chunked_attention" in layer_types else None,
        qk_l2_norm_after_rope=bool(tc.use_qk_norm),
        attn_temperature_floor=tc.floor_scale if tc.attn_temperature_tuning and nope_kinds else None,
        attn_temperature_scale=float(tc.attn_scale),
        mlp_kind="moe" if moe_layers else "dense", n_experts=tc.num_local_experts if moe_layers else 0,
        n_experts_per_tok=tc.num_experts_per_tok if moe_layers else 0,
        d_mlp_expert=tc.intermediate_size if moe_layers else None, moe_layers=moe_layers or None,
        d_mlp_shared_expert=tc.intermediate_size if moe_layers else None, shared_expert_gate=False,
        moe_router="sigmoid_topk_input",
    )


def llama4_text_rules(prefix: str) -> list[tuple[str, str]]:
    """Key rules for HF's Llama4TextModel under ``prefix`` (e.g. 'model.language_model')."""
    p = re.escape(prefix)
    lyr = rf"{p}\.layers\.(\d+)"
    return [
        (rf"{p}\.embed_tokens\.weight", "embed.weight"),
        (rf"{lyr}\.self_attn\.(q|k|v|o)_proj\.(weight|bias)", r"blocks.\1.attn.\2_proj.\3"),
        (rf"{lyr}\.feed_forward\.(gate|up|down)_proj\.weight", r"blocks.\1.mlp.\2_proj.weight"),  # dense layers
        (rf"{lyr}\.feed_forward\.router\.weight", r"blocks.\1.mlp.router.weight"),
        (rf"{lyr}\.feed_forward\.experts\.(gate_up|down)_proj", r"blocks.\1.mlp.\2_proj"),
        (rf"{lyr}\.feed_forward\.shared_expert\.(gate|up|down)_proj\.weight",
         r"blocks.\1.mlp.shared_expert.\2_proj.weight"),
        (rf"{lyr}\.input_layernorm\.weight", r"blocks.\1.ln1.w"),
        (rf"{lyr}\.post_attention_layernorm\.weight", r"blocks.\1.ln2.w"),
        (rf"{p}\.norm\.weight", "ln_final.w"),
        (r"lm_head\.weight", "unembed.weight"),
    ]


def experts_to_ours(t: torch.Tensor) -> torch.Tensor:
    """HF's fused expert tensor [expert, in, out] -> ours [expert, out, in] (gate_up: gate rows then up rows)."""
    return t.transpose(1, 2).contiguous()


TEXT_TRANSFORMS = [(r"blocks\.\d+\.mlp\.(gate_up|down)_proj", experts_to_ours)]
