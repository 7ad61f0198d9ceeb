"""The GLM-4 language model of GLM-4.1V / 4.5V / 4.6V (``text_config.model_type`` "glm4v_text"): an LM part.

Block: sandwich norms (``norm_placement="sandwich"``: HF's input_layernorm -> ln1, post_self_attn_layernorm ->
ln1_post, post_attention_layernorm -> ln2 (the MLP's input norm), post_mlp_layernorm -> ln2_post); q/k/v with bias,
o_proj without; the dense MLP's gate and up stored as one ``gate_up_proj`` (``fused_gate_up``); RoPE on the first
``head_dim * partial_rotary_factor`` channels of each head (``rotary_dim``), on (even, odd) pairs
(``rope_interleaved``: HF's ``rotate_half_llm`` with ``repeat_interleave(2)`` tables), with 3-D M-RoPE positions whose
``mrope_section`` gives contiguous runs of frequency pairs to (t, h, w) (not Qwen3-VL's interleaving).

:func:`glm4_text_config` lists the fields it handles (``GLM4_TEXT_FIELDS``) and refuses any other that changes the
math; :func:`glm4_rules` maps the decoder's checkpoint keys under a prefix.
"""

from __future__ import annotations

import re
from typing import Any

from hooked_vlm.config import TowerConfig

from ._decoder import check_rope_type
from .base import UnsupportedConfigError, check_fields

GLM4_TEXT_FIELDS = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_parameters",
                    "tie_word_embeddings"}
# hub configs of GLM-4.5V / 4.6V carry these in text_config; HF's GLM-4V modeling never reads them there (the image
# token ids are read from the top-level config; GLM-4V's attention has no q/k norm whatever use_qk_norm says)
GLM4_TEXT_IGNORED = {
    "image_token_id": "HF's GLM-4V models read the top-level image_token_id, never text_config's",
    "image_start_token_id": "HF's GLM-4V models never read text_config.image_start_token_id",
    "image_end_token_id": "HF's GLM-4V models never read text_config.image_end_token_id",
    "video_token_id": "HF's GLM-4V models read the top-level video_token_id, never text_config's",
}
GLM4_QK_NORM_PIN = {"use_qk_norm": (False, "HF's GLM-4V attention has no q/k norm (a GLM-4.5 text-model field): a "
                                           "checkpoint trained with it would carry q_norm / k_norm weights HF drops")}


HF_MROPE_SECTION = [8, 12, 12]  # Glm4vTextRotaryEmbedding's default


def glm4_rope(tc: Any, d_head: int, where: str) -> tuple[dict[str, Any], int]:
    """(rope_parameters with its mrope_section, rotary_dim) of a GLM-4 text config."""
    rope = dict(tc.rope_parameters or {"rope_type": "default", "rope_theta": 10000.0})
    check_rope_type(rope, where)
    factor = float(rope.get("partial_rotary_factor", 1.0))
    rotary_dim = int(d_head * factor)
    rope.setdefault("mrope_section", list(HF_MROPE_SECTION))
    rope["mrope_interleaved"] = False  # HF's GLM-4V rotary takes contiguous sections whatever the flag says
    section = list(rope["mrope_section"])
    if len(section) != 3 or sum(section) != rotary_dim // 2:
        raise UnsupportedConfigError(
            f"{where}: rope_parameters.mrope_section={section} must have 3 entries summing to rotary_dim // 2 = "
            f"{rotary_dim // 2} (head_dim {d_head} x partial_rotary_factor {factor} / 2): M-RoPE gives each (t, h, w) "
            "axis that many of the rotated frequency pairs")
    return rope, rotary_dim


def glm4_text_config(tc: Any, **fields: Any) -> TowerConfig:
    """HF Glm4vTextConfig -> TowerConfig; ``fields``: more TowerConfig fields (the MoE LM's)."""
    where = f"text_config ({tc.model_type})"
    if not fields:  # HF's GLM-4.1V q/k/v always have a bias; hub text configs say attention_bias: true
        check_fields(tc, GLM4_TEXT_FIELDS, where, GLM4_TEXT_IGNORED,
                     {**GLM4_QK_NORM_PIN, "attention_bias": (True, "HF's Glm4vTextAttention always has q/k/v biases")})
    d_head = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    rope, rotary_dim = glm4_rope(tc, d_head, where)
    base = dict(
        n_layers=tc.num_hidden_layers, d_model=tc.hidden_size, n_heads=tc.num_attention_heads,
        n_key_value_heads=tc.num_key_value_heads, d_head=d_head, d_mlp=tc.intermediate_size, act_fn=tc.hidden_act,
        gated_mlp=True, fused_gate_up=True, normalization_type="RMS", norm_eps=tc.rms_norm_eps,
        norm_placement="sandwich", attn_bias=True, attn_out_bias=False, mlp_bias=False, causal=True,
        positional="rope", rope_parameters=rope, rotary_dim=None if rotary_dim == d_head else rotary_dim,
        rope_interleaved=True, max_position_embeddings=tc.max_position_embeddings,
    )
    base.update(fields)
    return TowerConfig(**base)


def glm4_rules(prefix: str) -> list[tuple[str, str]]:
    """Key rules of the GLM-4 decoder under ``prefix`` (e.g. 'model.language_model')."""
    p = re.escape(prefix)
    lyr = rf"{p}\.layers\.(\d+)"
    norms = {"input_layernorm": "ln1", "post_self_attn_layernorm": "ln1_post", "post_attention_layernorm": "ln2",
             "post_mlp_layernorm": "ln2_post"}
    return [
        (rf"{p}\.embed_tokens\.weight", "embed.weight"),
        (rf"{lyr}\.self_attn\.(q|k|v)_proj\.(weight|bias)", r"blocks.\1.attn.\2_proj.\3"),
        (rf"{lyr}\.self_attn\.o_proj\.weight", r"blocks.\1.attn.o_proj.weight"),
        (rf"{lyr}\.mlp\.(gate_up|down)_proj\.weight", r"blocks.\1.mlp.\2_proj.weight"),
        *[(rf"{lyr}\.{hf}\.weight", rf"blocks.\1.{ours}.w") for hf, ours in norms.items()],
        (rf"{p}\.norm\.weight", "ln_final.w"),
        (r"lm_head\.weight", "unembed.weight"),
    ]


# ---------------------------------------------------------------- GLM-4.5V's LM (text_config.model_type "glm4v_moe_text")
GLM4_MOE_TEXT_FIELDS = GLM4_TEXT_FIELDS | {
    "head_dim", "attention_bias", "moe_intermediate_size", "num_experts_per_tok", "n_shared_experts",
    "n_routed_experts", "routed_scaling_factor", "n_group", "topk_group", "first_k_dense_replace", "norm_topk_prob"}
GLM4_MOE_IGNORED = {"output_router_logits": "returns the router logits / adds the auxiliary loss: training outputs only",
                    "router_aux_loss_coef": "weight of the load-balancing loss, used in training only"}
def glm4_moe_text_config(tc: Any) -> TowerConfig:
    """HF Glm4vMoeTextConfig -> TowerConfig. Unlike GLM-4.1V's LM: pre-norm blocks (no post norms), rotate-half RoPE
    (HF's GLM-4.5V rotary concatenates the tables), separate gate / up in the dense layers (< first_k_dense_replace),
    attention_bias read; the other layers are MoE: ``n_routed_experts`` experts with the bias-corrected grouped sigmoid
    router (``moe_router="sigmoid_grouped"``) and ``n_shared_experts`` ungated shared experts (one MLP of width
    ``n_shared_experts * moe_intermediate_size``)."""
    where = f"text_config ({tc.model_type})"
    check_fields(tc, GLM4_MOE_TEXT_FIELDS, where, {**GLM4_MOE_IGNORED, **GLM4_TEXT_IGNORED}, GLM4_QK_NORM_PIN)
    n_experts = tc.n_routed_experts
    if n_experts % tc.n_group or not 0 < tc.topk_group <= tc.n_group:
        raise UnsupportedConfigError(f"{where}: n_routed_experts={n_experts} must split into n_group={tc.n_group} "
                                     f"groups with 0 < topk_group={tc.topk_group} <= n_group (HF's grouped router)")
    moe_layers = tuple(range(tc.first_k_dense_replace, tc.num_hidden_layers))
    moe = dict(mlp_kind="moe", n_experts=n_experts, n_experts_per_tok=tc.num_experts_per_tok,
               d_mlp_expert=tc.moe_intermediate_size, moe_layers=moe_layers,
               d_mlp_shared_expert=tc.moe_intermediate_size * tc.n_shared_experts if tc.n_shared_experts else None,
               shared_expert_gate=False, moe_router="sigmoid_grouped", moe_n_group=tc.n_group,
               moe_topk_group=tc.topk_group, moe_norm_topk_prob=bool(tc.norm_topk_prob),
               moe_routed_scaling=float(tc.routed_scaling_factor)) if moe_layers else {}
    return glm4_text_config(tc, norm_placement="pre", fused_gate_up=False, rope_interleaved=False,
                            attn_bias=bool(tc.attention_bias), **moe)


def glm4_moe_rules(prefix: str) -> list[tuple[str, str]]:
    p = re.escape(prefix)
    lyr = rf"{p}\.layers\.(\d+)"
    return [
        (rf"{p}\.embed_tokens\.weight", "embed.weight"),
        (rf"{lyr}\.self_attn\.(q|k|v)_proj\.(weight|bias)", r"blocks.\1.attn.\2_proj.\3"),
        (rf"{lyr}\.self_attn\.o_proj\.weight", r"blocks.\1.attn.o_proj.weight"),
        (rf"{lyr}\.mlp\.(gate|up|down)_proj\.weight", r"blocks.\1.mlp.\2_proj.weight"),  # dense layers
        (rf"{lyr}\.mlp\.gate\.weight", r"blocks.\1.mlp.router.weight"),
        (rf"{lyr}\.mlp\.gate\.e_score_correction_bias", r"blocks.\1.mlp.e_score_correction_bias"),
        (rf"{lyr}\.mlp\.experts\.(gate_up|down)_proj", r"blocks.\1.mlp.\2_proj"),
        (rf"{lyr}\.mlp\.shared_experts\.(gate|up|down)_proj\.weight", r"blocks.\1.mlp.shared_expert.\2_proj.weight"),
        (rf"{lyr}\.input_layernorm\.weight", r"blocks.\1.ln1.w"),
        (rf"{lyr}\.post_attention_layernorm\.weight", r"blocks.\1.ln2.w"),
        (rf"{p}\.norm\.weight", "ln_final.w"),
        (r"lm_head\.weight", "unembed.weight"),
    ]
