"""The EXAONE 4 language model (``text_config.model_type`` "exaone4": EXAONE 4.0, and the LM of EXAONE 4.5): an LM part.

HF's Exaone4 differs from a Llama decoder in three ways, each a config field of the shared components:

- post-sublayer norms only (``norm_placement="post_sublayer"``, HF's ``Olmo2DecoderLayer``): ``x + norm(attn(x))``,
  then ``h + norm(mlp(h))``; no input norms. HF's post_attention_layernorm -> ``ln1``, post_feedforward_layernorm ->
  ``ln2`` (the block's two norms, applied to the sublayer outputs; hook_attn_out / hook_mlp_out are after them);
- RMS q/k norms over each head's d_head, shared by all heads, before RoPE (``qk_norm="RMS"``, as Qwen3);
- ``layer_types``: with ``sliding_window`` set, "sliding_attention" layers use the window AND RoPE while
  "full_attention" layers use neither (NoPE: HF rotates only when ``sliding_window is None or is_sliding``), so
  ``layer_rope_parameters`` maps full_attention to None (Cohere2's mechanism). With ``sliding_window=None`` every layer
  rotates and none is windowed.

``sliding_window_pattern`` is read through ``layer_types`` (HF derives the list from it when the config has none).
"""

from __future__ import annotations

import re
from typing import Any

from hooked_vlm.config import TowerConfig

from ._decoder import check_rope_type
from .base import UnsupportedConfigError, check_fields

#: the Exaone4Config fields exaone4_text_config reads (head_dim: read with getattr as HF's attention does)
EXAONE4_FIELDS = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
                  "rope_parameters", "sliding_window", "sliding_window_pattern", "layer_types", "tie_word_embeddings"}
#: fields hub configs carry that HF's Exaone4 never reads
EXAONE4_IGNORED = {
    "max_window_layers": "a Qwen2-style field copied into EXAONE configs; HF's Exaone4 reads the windows from layer_types",
    "reorder_qk_norm": "a flag of LG's original code; HF's Exaone4 always norms q / k before RoPE, as this converter does",
}
LAYER_KINDS = ("sliding_attention", "full_attention")


def exaone4_text_config(tc: Any) -> TowerConfig:
    """An Exaone4Config -> our TowerConfig."""
    where = f"text_config ({tc.model_type})"
    if tc.model_type != "exaone4":
        raise UnsupportedConfigError(f"text_config.model_type={tc.model_type!r} is not an EXAONE 4 language model")
    check_fields(tc, EXAONE4_FIELDS, where, EXAONE4_IGNORED)
    rope = dict(tc.rope_parameters or {"rope_type": "default", "rope_theta": 10000.0})
    check_rope_type(rope, where)
    layer_types = tuple(tc.layer_types)
    unknown = sorted(set(layer_types) - set(LAYER_KINDS))
    if unknown or len(layer_types) != tc.num_hidden_layers:
        raise UnsupportedConfigError(f"{where}: layer_types must give one of {', '.join(LAYER_KINDS)} per layer "
                                     f"({tc.num_hidden_layers}); got {list(layer_types)}")
    window = tc.sliding_window
    if window is None and "sliding_attention" in layer_types:
        raise UnsupportedConfigError(
            f"{where}: sliding_window=None with sliding_attention layers {[i for i, t in enumerate(layer_types) if t != 'full_attention']}: "
            "HF then rotates every layer and builds a sliding mask without a window; give sliding_window or make "
            "every layer full_attention")
    d_head = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    return TowerConfig(
        n_layers=tc.num_hidden_layers, d_model=tc.hidden_size, n_heads=tc.num_attention_heads,
        n_key_value_heads=tc.num_key_value_heads, d_head=d_head, d_mlp=tc.intermediate_size, act_fn=tc.hidden_act,
        gated_mlp=True, normalization_type="RMS", norm_eps=tc.rms_norm_eps, norm_placement="post_sublayer",
        attn_bias=False, attn_out_bias=False, mlp_bias=False, causal=True, positional="rope", rope_parameters=rope,
        max_position_embeddings=tc.max_position_embeddings, qk_norm="RMS",
        sliding_window=window if "sliding_attention" in layer_types else None, layer_types=layer_types,
        # sliding_window set: global layers are NoPE; unset: every (full) layer rotates with the one table
        layer_rope_parameters=None if window is None else {"sliding_attention": rope, "full_attention": None},
    )


def exaone4_rules(prefix: str) -> list[tuple[str, str]]:
    """Key rules of an HF Exaone4Model under ``prefix`` (e.g. 'model.language_model') + the ``lm_head``."""
    p = re.escape(prefix)
    return [
        (rf"{p}\.embed_tokens\.weight", "embed.weight"),
        (rf"{p}\.layers\.(\d+)\.self_attn\.(q|k|v|o)_proj\.weight", r"blocks.\1.attn.\2_proj.weight"),
        (rf"{p}\.layers\.(\d+)\.self_attn\.(q|k)_norm\.weight", r"blocks.\1.attn.\2_norm.w"),
        (rf"{p}\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight", r"blocks.\1.mlp.\2_proj.weight"),
        (rf"{p}\.layers\.(\d+)\.post_attention_layernorm\.weight", r"blocks.\1.ln1.w"),
        (rf"{p}\.layers\.(\d+)\.post_feedforward_layernorm\.weight", r"blocks.\1.ln2.w"),
        (rf"{p}\.norm\.weight", "ln_final.w"),
        (r"lm_head\.weight", "unembed.weight"),
    ]
