"""The HunYuan dense language model of HunYuanVL (``text_config.model_type`` "hunyuan_vl_text"): an LM part.

A Llama-style decoder (pre-norm, SwiGLU MLP without bias) with three differences, each a config field of the shared
components:

- ``attention_bias`` puts a bias on q, k, v AND o;
- RMS q/k norms over each head's d_head (HF's ``query_layernorm`` / ``key_layernorm``), applied AFTER RoPE
  (``qk_norm_after_rope``);
- multimodal RoPE over ``len(mrope_section)`` axes (3 or 4: [sequence,] column, row, image index) whose table takes
  consecutive runs of ``2 * section[i]`` channels of the doubled frequency table from axis ``i``
  (``rope_parameters["mrope_layout"] = "doubled"``, HF's ``recomposition_frequencies``); positions from the
  ``xdrope`` position function (``hooked_vlm/positions_grid.py``).

RoPE frequencies: HF's ``ntk_alpha`` (a ``dynamic`` rope_type with ``alpha``: the base becomes
``rope_theta * alpha ** (head_dim / (head_dim - 2))``, independent of the sequence length) is converted to that base
with rope_type "default"; ``dynamic`` without ``alpha`` (rescaled with the sequence length) is refused.
"""

from __future__ import annotations

import re
from typing import Any

from hooked_vlm.config import TowerConfig

from ._decoder import check_rope_type
from .base import UnsupportedConfigError, check_fields

#: the HunYuanVLTextConfig fields hunyuan_text_config reads
HUNYUAN_TEXT_FIELDS = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                       "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
                       "rope_parameters", "attention_bias", "tie_word_embeddings", "pretraining_tp"}
HUNYUAN_TEXT_IGNORED = {
    "eod_token_id": "an end-of-document token id for tokenizers; the model never reads it",
    "sep_token_id": "a separator token id for tokenizers; the model never reads it",
}
# keys of rope_parameters HF's HunYuanVL rotary reads (beside rope_type / rope_theta); the rest are validation-only
_ROPE_KEYS = {"rope_type", "type", "rope_theta", "alpha", "factor", "mrope_section", "beta_fast", "beta_slow", "mscale",
              "mscale_all_dim"}


def hunyuan_rope(tc: Any, d_head: int, where: str) -> dict[str, Any]:
    """Our rope_parameters for a HunYuanVL text config (``mrope_layout="doubled"``, ntk_alpha folded into the base)."""
    rope = dict(tc.rope_parameters or {"rope_type": "default", "rope_theta": 10000.0})
    unknown = sorted(set(rope) - _ROPE_KEYS)
    if unknown:
        raise UnsupportedConfigError(f"{where}: rope_parameters has {unknown}, which this converter does not read")
    kind = rope.get("rope_type", "default")
    section = rope.get("mrope_section")
    if not section or len(section) < 3 or sum(section) != d_head // 2:
        raise UnsupportedConfigError(
            f"{where}: rope_parameters.mrope_section={section!r} must have >= 3 entries ((sequence,) column, row, image "
            f"index) summing to head_dim // 2 = {d_head // 2}: HunYuanVL's rotary needs it")
    theta = float(rope["rope_theta"])
    if kind == "dynamic" and rope.get("alpha"):  # HF's ntk_alpha: a fixed base, no dependence on the length
        theta = theta * float(rope["alpha"]) ** (d_head / (d_head - 2))
        kind = "default"
    out = {"rope_type": kind, "rope_theta": theta, "mrope_section": [int(s) for s in section], "mrope_layout": "doubled"}
    if kind != "default":
        raise UnsupportedConfigError(
            f"{where}: rope_parameters.rope_type={rope.get('rope_type')!r} without alpha: HunYuanVL's rotary then uses "
            "HF's dynamic (or scaled) frequencies on its multimodal axes, which this converter does not implement; "
            "supported: 'default', and 'dynamic' / 'xdrope' with alpha (ntk_alpha)")
    check_rope_type(out, where)
    return out


def hunyuan_text_config(tc: Any) -> TowerConfig:
    """A HunYuanVLTextConfig -> our TowerConfig."""
    where = f"text_config ({tc.model_type})"
    check_fields(tc, HUNYUAN_TEXT_FIELDS, where, HUNYUAN_TEXT_IGNORED)
    d_head = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    bias = bool(tc.attention_bias)
    return TowerConfig(
        n_layers=tc.num_hidden_layers, d_model=tc.hidden_size, n_heads=tc.num_attention_heads,
        n_key_value_heads=tc.num_key_value_heads, d_head=d_head, d_mlp=tc.intermediate_size, act_fn=tc.hidden_act,
        gated_mlp=True, normalization_type="RMS", norm_eps=tc.rms_norm_eps, attn_bias=bias, attn_out_bias=bias,
        mlp_bias=False, causal=True, positional="rope", rope_parameters=hunyuan_rope(tc, d_head, where),
        max_position_embeddings=tc.max_position_embeddings, qk_norm="RMS", qk_norm_after_rope=True,
    )


def hunyuan_rules(prefix: str) -> list[tuple[str, str]]:
    """Key rules of HF's HunYuanVLTextModel under ``prefix`` (e.g. 'model.language_model') + the ``lm_head``."""
    p = re.escape(prefix)
    return [
        (rf"{p}\.embed_tokens\.weight", "embed.weight"),
        (rf"{p}\.layers\.(\d+)\.self_attn\.(q|k|v|o)_proj\.(weight|bias)", r"blocks.\1.attn.\2_proj.\3"),
        (rf"{p}\.layers\.(\d+)\.self_attn\.query_layernorm\.weight", r"blocks.\1.attn.q_norm.w"),
        (rf"{p}\.layers\.(\d+)\.self_attn\.key_layernorm\.weight", r"blocks.\1.attn.k_norm.w"),
        (rf"{p}\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight", r"blocks.\1.mlp.\2_proj.weight"),
        (rf"{p}\.layers\.(\d+)\.input_layernorm\.weight", r"blocks.\1.ln1.w"),
        (rf"{p}\.layers\.(\d+)\.post_attention_layernorm\.weight", r"blocks.\1.ln2.w"),
        (rf"{p}\.norm\.weight", "ln_final.w"),
        (r"lm_head\.weight", "unembed.weight"),
    ]
