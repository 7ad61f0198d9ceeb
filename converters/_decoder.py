"""The decoder-only language models inside VLMs (Llama / Vicuna, Mistral, Qwen2) -> TowerConfig + key rules."""

from __future__ import annotations

import re
from typing import Any

from hooked_vlm.components.rope import STATIC_ROPE_TYPES
from hooked_vlm.config import TowerConfig

from .base import UnsupportedConfigError, check_fields

DECODER_FIELDS = {
    "llama": {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
              "rope_parameters", "attention_bias", "mlp_bias", "tie_word_embeddings", "pretraining_tp"},
    "mistral": {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
                "rope_parameters", "sliding_window", "tie_word_embeddings"},
    "qwen2": {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_parameters",
              "use_sliding_window", "sliding_window", "max_window_layers", "layer_types", "tie_word_embeddings"},
    "emu3_text_model": {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                        "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
                        "rope_parameters", "attention_bias", "mlp_bias", "tie_word_embeddings"},
}


def decoder_config(tc: Any) -> TowerConfig:
    """A Llama-style decoder's HF text config -> our TowerConfig."""
    kind = tc.model_type
    if kind not in DECODER_FIELDS:
        raise UnsupportedConfigError(
            f"text model type {kind!r} is not supported inside this VLM; supported: {', '.join(sorted(DECODER_FIELDS))}"
        )
    check_fields(tc, DECODER_FIELDS[kind], f"text_config ({kind})")
    rope = dict(tc.rope_parameters or {"rope_type": "default", "rope_theta": 10000.0})
    if rope.get("rope_type", "default") not in STATIC_ROPE_TYPES:
        raise UnsupportedConfigError(f"rope_type {rope.get('rope_type')!r} is not supported; supported: {STATIC_ROPE_TYPES}")
    if getattr(tc, "pretraining_tp", 1) not in (1, None):
        raise UnsupportedConfigError("pretraining_tp != 1 is not supported")
    sliding = getattr(tc, "sliding_window", None)
    if kind == "qwen2":
        layer_types = getattr(tc, "layer_types", None) or []
        if not getattr(tc, "use_sliding_window", False) or all(t == "full_attention" for t in layer_types):
            sliding = None
        else:
            raise UnsupportedConfigError("Qwen2 with use_sliding_window=True (per-layer windows) is not supported")
    qkv_bias = kind == "qwen2" or bool(getattr(tc, "attention_bias", False))
    return TowerConfig(
        n_layers=tc.num_hidden_layers,
        d_model=tc.hidden_size,
        n_heads=tc.num_attention_heads,
        n_key_value_heads=tc.num_key_value_heads,
        d_head=getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads,
        d_mlp=tc.intermediate_size,
        act_fn=tc.hidden_act,
        gated_mlp=True,
        normalization_type="RMS",
        norm_eps=tc.rms_norm_eps,
        attn_bias=qkv_bias,
        attn_out_bias=bool(getattr(tc, "attention_bias", False)),
        mlp_bias=bool(getattr(tc, "mlp_bias", False)),
        causal=True,
        positional="rope",
        rope_parameters=rope,
        max_position_embeddings=tc.max_position_embeddings,
        sliding_window=sliding,
    )


def decoder_rules(prefix: str) -> list[tuple[str, str]]:
    """Key rules for an HF Llama-style decoder whose modules sit under ``prefix`` (e.g. 'model.language_model')."""
    p = re.escape(prefix)
    return [
        (rf"{p}\.embed_tokens\.weight", "embed.weight"),
        (rf"{p}\.layers\.(\d+)\.self_attn\.(q|k|v|o)_proj\.(weight|bias)", r"blocks.\1.attn.\2_proj.\3"),
        (rf"{p}\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.(weight|bias)", r"blocks.\1.mlp.\2_proj.\3"),
        (rf"{p}\.layers\.(\d+)\.input_layernorm\.weight", r"blocks.\1.ln1.w"),
        (rf"{p}\.layers\.(\d+)\.post_attention_layernorm\.weight", r"blocks.\1.ln2.w"),
        (rf"{p}\.norm\.weight", "ln_final.w"),
        (r"lm_head\.weight", "unembed.weight"),
    ]



