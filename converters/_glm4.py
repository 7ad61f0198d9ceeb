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
    if not fields:
        check_fields(tc, GLM4_TEXT_FIELDS, where)
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
