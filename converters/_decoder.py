"""The decoder-only language models inside VLMs (Llama / Vicuna, Mistral, Qwen2, Qwen3, Granite) -> TowerConfig + key rules.

Qwen3's q/k norms are parameters ``blocks.{l}.attn.q_norm.w`` / ``k_norm.w``: add :func:`qk_norm_rules` to
:func:`decoder_rules` for a Qwen3 LM."""

from __future__ import annotations

import re
from typing import Any, NoReturn

from hooked_vlm.components.rope import BOUNDED_ROPE_TYPES, STATIC_ROPE_TYPES
from hooked_vlm.config import TowerConfig

from .base import UnsupportedConfigError, check_fields

DECODER_FIELDS = {
    "llama": {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
              "rope_parameters", "attention_bias", "mlp_bias", "tie_word_embeddings", "pretraining_tp"},
    "mistral": {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
                "rope_parameters", "sliding_window", "tie_word_embeddings"},
    # head_dim is no Qwen2Config field, but HF's Qwen2 attention and rotary read getattr(config, "head_dim", ...)
    "qwen2": {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_parameters",
              "use_sliding_window", "sliding_window", "max_window_layers", "layer_types", "tie_word_embeddings"},
    # Qwen3: Qwen2's fields + attention_bias (on q, k, v AND o) and RMS q/k norms over head_dim (always on)
    "qwen3": {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_parameters",
              "attention_bias", "use_sliding_window", "sliding_window", "max_window_layers", "layer_types",
              "tie_word_embeddings"},
    # Granite: Llama + three scalars (embedding_multiplier on the whole input stream, image embeddings included;
    # residual_multiplier on each sub-layer output; attention_multiplier as the attention scale). logits_scaling is
    # read by GraniteForCausalLM's head only: inside a VLM the VLM's own lm_head makes the logits (HF never divides)
    "granite": {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
                "rope_parameters", "attention_bias", "mlp_bias", "tie_word_embeddings", "embedding_multiplier",
                "logits_scaling", "residual_multiplier", "attention_multiplier"},
    "emu3_text_model": {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                        "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
                        "rope_parameters", "attention_bias", "mlp_bias", "tie_word_embeddings"},
}


def decoder_config(tc: Any, ignored: dict[str, str] | None = None,
                   pinned: dict[str, tuple[Any, str]] | None = None, dynamic_rope: bool = False) -> TowerConfig:
    """A Llama-style decoder's HF text config -> our TowerConfig (``ignored`` / ``pinned``: see check_fields;
    ``dynamic_rope``: accept dynamic-NTK RoPE, exact below max_position_embeddings, refused beyond at run time)."""
    kind = tc.model_type
    if kind not in DECODER_FIELDS:
        raise UnsupportedConfigError(
            f"text_config.model_type={kind!r}: a language model this converter does not build; supported: "
            f"{', '.join(sorted(DECODER_FIELDS))}"
        )
    check_fields(tc, DECODER_FIELDS[kind], f"text_config ({kind})", ignored, pinned)
    rope = dict(tc.rope_parameters or {"rope_type": "default", "rope_theta": 10000.0})
    check_rope_type(rope, f"text_config ({kind})", dynamic_rope)
    # pretraining_tp: transformers 5 never reads it (4.x only split the matmuls into slices: the same numbers)
    sliding = getattr(tc, "sliding_window", None)
    if kind in ("qwen2", "qwen3"):
        sliding = None if uniform_full_attention(tc) else refuse_layer_windows(tc, f"text_config ({kind})")
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
        qk_norm="RMS" if kind == "qwen3" else None,  # Qwen3RMSNorm(head_dim, eps=rms_norm_eps) on q and k
        **(granite_scalars(tc) if kind == "granite" else {}),
    )


def granite_scalars(tc: Any) -> dict[str, float]:
    """Granite's multipliers as TowerConfig fields (HF GraniteModel / GraniteDecoderLayer / GraniteAttention)."""
    return dict(embedding_multiplier=float(tc.embedding_multiplier), residual_multiplier=float(tc.residual_multiplier),
                attn_scale=float(tc.attention_multiplier))


def check_rope_type(rope: dict[str, Any], where: str, dynamic: bool = False) -> None:
    kind = rope.get("rope_type", "default")
    if not (kind in STATIC_ROPE_TYPES or (dynamic and kind in BOUNDED_ROPE_TYPES)):
        raise UnsupportedConfigError(
            f"{where}: rope_parameters.rope_type={kind!r}: rope_type {kind!r} is not supported; supported: "
            f"{', '.join(STATIC_ROPE_TYPES)}. It changes the numbers: HF computes the rotary frequencies with it "
            "(dynamic types rescale them with the sequence length at run time), this converter only precomputes "
            "the static types")


def uniform_full_attention(tc: Any) -> bool:
    """True when HF's Qwen2-style ``layer_types`` give every layer full attention (``sliding_window`` then unused:
    HF sets it to None unless use_sliding_window, and only layers >= max_window_layers would slide)."""
    layer_types = getattr(tc, "layer_types", None) or []
    return not getattr(tc, "use_sliding_window", False) or all(t == "full_attention" for t in layer_types)


def refuse_layer_windows(tc: Any, where: str) -> NoReturn:
    sliding = [i for i, t in enumerate(tc.layer_types) if t != "full_attention"]
    raise UnsupportedConfigError(
        f"{where}: use_sliding_window=True with sliding_window={tc.sliding_window} and max_window_layers="
        f"{getattr(tc, 'max_window_layers', None)} gives layer_types with sliding attention in layer(s) {sliding}: HF "
        f"masks keys more than {tc.sliding_window} positions back in those layers only, and this converter has one "
        "attention window for all layers, so per-layer windows are not supported")


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


def qk_norm_rules(prefix: str) -> list[tuple[str, str]]:
    """Key rules for the per-head q/k norm weights of a Qwen3-style decoder under ``prefix``."""
    p = re.escape(prefix)
    return [(rf"{p}\.layers\.(\d+)\.self_attn\.(q|k)_norm\.weight", r"blocks.\1.attn.\2_norm.w")]
