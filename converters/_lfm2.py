"""The LFM2 language model (Liquid AI; inside LFM2-VL) -> TowerConfig + key rules.

Blocks: ``operator_norm`` (RMS) -> token mixer -> + residual -> ``ffn_norm`` (RMS) -> SwiGLU ``feed_forward``
(w1 = gate, w3 = up, w2 = down) -> + residual. The mixer of layer ``l`` is ``layer_types[l]``: ``conv`` = the gated
short convolution (hooked_vlm/components/short_conv.py: ``in_proj`` -> b, c, h; causal depthwise ``conv`` of
``conv_L_cache`` taps over b * h; ``out_proj`` of c * conv), ``full_attention`` = GQA attention with RMS q/k norms
over head_dim (``q_layernorm`` / ``k_layernorm``) and RoPE. The final norm is ``embedding_norm`` (named so in HF, it
normalises the LAST hidden state). The feed-forward width is HF's ``block_auto_adjust_ff_dim`` arithmetic.
"""

from __future__ import annotations

import re
from typing import Any

from hooked_vlm.config import ShortConvConfig, TowerConfig

from ._decoder import check_rope_type
from .base import UnsupportedConfigError, check_copy, check_fields

LFM2_FIELDS = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "max_position_embeddings", "norm_eps", "rope_parameters", "conv_bias",
               "conv_L_cache", "block_multiple_of", "block_ffn_dim_multiplier", "block_auto_adjust_ff_dim",
               "full_attn_idxs", "layer_types", "tie_word_embeddings",
               # legacy copies of fields HF reads, checked equal below
               "block_dim", "conv_dim", "conv_dim_out", "num_heads", "block_norm_eps"}
_INIT = "an initialisation setting of the original (Liquid) training code; HF's Lfm2 never reads it"
LFM2_IGNORED = {"block_mlp_init_scale": _INIT, "block_out_init_scale": _INIT, "block_use_xavier_init": _INIT,
                "conv_use_xavier_init": _INIT}
LFM2_PINNED = {
    "block_use_swiglu": (True, "False would be a plain (ungated) MLP in the original code; HF's Lfm2MLP is always "
                               "SwiGLU (w2(silu(w1 x) * w3 x))"),
    "use_pos_enc": (True, "False would drop the rotary position encoding in the original code; HF's Lfm2 always "
                          "rotates q and k"),
}
MIXER_KINDS = ("conv", "full_attention")


def lfm2_d_mlp(tc: Any) -> int:
    """HF Lfm2MLP's width: 2/3 of intermediate_size, times block_ffn_dim_multiplier, up to block_multiple_of."""
    d = tc.intermediate_size
    if tc.block_auto_adjust_ff_dim:
        d = int(2 * d / 3)
        if tc.block_ffn_dim_multiplier is not None:
            d = int(tc.block_ffn_dim_multiplier * d)
            d = tc.block_multiple_of * ((d + tc.block_multiple_of - 1) // tc.block_multiple_of)
    return d


def lfm2_config(tc: Any) -> TowerConfig:
    where = f"text_config ({tc.model_type})"
    check_fields(tc, LFM2_FIELDS, where, LFM2_IGNORED, LFM2_PINNED)
    for copy, reads in (("block_dim", "hidden_size"), ("conv_dim", "hidden_size"), ("conv_dim_out", "hidden_size"),
                        ("num_heads", "num_attention_heads"), ("block_norm_eps", "norm_eps")):
        check_copy(tc, copy, getattr(tc, reads), reads, where)
    layer_types = tuple(tc.layer_types)
    bad = sorted(set(layer_types) - set(MIXER_KINDS))
    if bad or len(layer_types) != tc.num_hidden_layers:
        raise UnsupportedConfigError(f"{where}: layer_types must list one of {MIXER_KINDS} per layer "
                                     f"({tc.num_hidden_layers}); got {len(layer_types)} entries, unknown kinds {bad}: "
                                     "HF's Lfm2 builds an attention layer for every entry that is not 'conv'")
    rope = dict(tc.rope_parameters or {"rope_type": "default", "rope_theta": 1000000.0})
    check_rope_type(rope, where)
    return TowerConfig(
        n_layers=tc.num_hidden_layers, d_model=tc.hidden_size, n_heads=tc.num_attention_heads,
        n_key_value_heads=tc.num_key_value_heads,
        d_head=getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads,
        d_mlp=lfm2_d_mlp(tc), act_fn="silu", gated_mlp=True, normalization_type="RMS", norm_eps=tc.norm_eps,
        causal=True, positional="rope", rope_parameters=rope, max_position_embeddings=tc.max_position_embeddings,
        qk_norm="RMS", layer_types=layer_types,
        short_conv=ShortConvConfig(kernel=tc.conv_L_cache, bias=bool(tc.conv_bias)),
    )


def lfm2_rules(prefix: str) -> list[tuple[str, str]]:
    """Key rules for an HF Lfm2Model under ``prefix`` (e.g. 'model.language_model')."""
    layer = rf"{re.escape(prefix)}\.layers\.(\d+)"
    p = re.escape(prefix)
    return [
        (rf"{p}\.embed_tokens\.weight", "embed.weight"),
        (rf"{layer}\.operator_norm\.weight", r"blocks.\1.ln1.w"),
        (rf"{layer}\.ffn_norm\.weight", r"blocks.\1.ln2.w"),
        (rf"{layer}\.self_attn\.(q|k|v)_proj\.weight", r"blocks.\1.attn.\2_proj.weight"),
        (rf"{layer}\.self_attn\.out_proj\.weight", r"blocks.\1.attn.o_proj.weight"),
        (rf"{layer}\.self_attn\.(q|k)_layernorm\.weight", r"blocks.\1.attn.\2_norm.w"),
        (rf"{layer}\.conv\.(in_proj|out_proj|conv)\.(weight|bias)", r"blocks.\1.conv.\2.\3"),
        (rf"{layer}\.feed_forward\.w1\.weight", r"blocks.\1.mlp.gate_proj.weight"),
        (rf"{layer}\.feed_forward\.w3\.weight", r"blocks.\1.mlp.up_proj.weight"),
        (rf"{layer}\.feed_forward\.w2\.weight", r"blocks.\1.mlp.down_proj.weight"),
        (rf"{p}\.embedding_norm\.weight", "ln_final.w"),
        (r"lm_head\.weight", "unembed.weight"),
    ]
