"""The Cohere2 and Cohere language models (Command R7B / Command A, and Command R / Aya Expanse: the LMs of Aya Vision
8B and 32B and Cohere2 Vision) -> TowerConfig + key rules.

HF's Cohere2 differs from a Llama decoder in five ways, each a config field of the shared components:

- parallel block (``parallel_block``): one ``input_layernorm`` (ln1) feeds attention and the MLP, and both outputs are
  added to the residual at once (no ln2, no hook_resid_mid);
- Cohere's LayerNorm: mean-centred, weight only, in float32 (``normalization_type="LN"``, ``norm_bias=False``);
- RoPE on interleaved (even, odd) pairs (``rope_interleaved``: HF's ``repeat_interleave`` tables and pairwise
  rotate_half);
- ``layer_types``: "sliding_attention" layers use the window AND RoPE, "full_attention" layers neither (NoPE:
  HF rotates q/k only when ``self.sliding_window is not None``): ``layer_rope_parameters`` maps full_attention to None;
- ``logit_scale`` multiplies the logits (Cohere2ForCausalLM; ``TowerConfig.logit_scale``, applied by the unembedding).
  HF's VLM wrappers (AyaVisionForConditionalGeneration, Cohere2VisionForConditionalGeneration) call the bare LM and
  their own ``lm_head`` and never multiply: a family converter keeps HF's numbers by setting it back to 1.0.

``head_dim``: HF's Cohere2Config.__post_init__ always overwrites it with hidden_size // num_attention_heads, so that is
what we use (a different value in config.json never reaches the model).

Cohere (v1, ``model_type == "cohere"``: Aya Vision 32B's Aya Expanse 32B): the same block, norm, interleaved RoPE and
logit scale, RoPE in every layer, no sliding window, and optional per-head LayerNorm q/k norms without bias
(``use_qk_norm``: ``qk_norm="LN"``, ``qk_norm_per_head``, weights ``self_attn.q_norm`` / ``k_norm``); its head_dim is
read with ``getattr(config, "head_dim", hidden_size // num_attention_heads)`` as HF's CohereAttention does.
"""

from __future__ import annotations

import re
from typing import Any

from hooked_vlm.config import TowerConfig

from ._decoder import check_rope_type
from .base import UnsupportedConfigError, check_fields

#: the Cohere2Config fields this converter reads
COHERE2_FIELDS = {"vocab_size", "hidden_size", "intermediate_size", "logit_scale", "num_hidden_layers",
                  "num_attention_heads", "num_key_value_heads", "hidden_act", "max_position_embeddings",
                  "layer_norm_eps", "tie_word_embeddings", "rope_parameters", "attention_bias", "sliding_window",
                  "layer_types", "head_dim",  # head_dim: recomputed by HF (module docstring), so read as HF does
                  "sliding_window_pattern", "_sliding_window_pattern",  # read through layer_types (HF derives it)
                  "use_embedding_sharing"}  # the original release's name for tie_word_embeddings: checked equal
#: keys of the original Cohere2 release that HF never reads
COHERE2_IGNORED = {
    "model_max_length": "a tokenizer limit copied into the config; the model never reads it",
    "cache_implementation": "a generation-cache default (HF's generate); the forward's numbers never depend on it",
    "use_parallel_embedding": "a tensor-parallel sharding switch of the original training code",
}
_PINNED_WHY = "HF's Cohere2 hard-codes it; another value describes a model HF (and this converter) builds differently"
COHERE2_PINNED = {
    "order_of_interleaved_layers": ("local_attn_first", "sliding layers come first in each group; " + _PINNED_WHY),
    "position_embedding_type": ("rope_gptj", "interleaved (GPT-J) RoPE; " + _PINNED_WHY),
    "rotary_pct": (1.0, "RoPE on the whole head; " + _PINNED_WHY),
    "use_gated_activation": (True, "a SwiGLU MLP; " + _PINNED_WHY),
    "use_parallel_block": (True, "attention and MLP in parallel; " + _PINNED_WHY),
    "use_qk_norm": (False, "HF's Cohere2 has no q/k norm; " + _PINNED_WHY),
}
LAYER_KINDS = ("sliding_attention", "full_attention")
#: the CohereConfig fields cohere_text_config reads
COHERE_FIELDS = {"vocab_size", "hidden_size", "intermediate_size", "logit_scale", "num_hidden_layers",
                 "num_attention_heads", "num_key_value_heads", "hidden_act", "max_position_embeddings",
                 "layer_norm_eps", "tie_word_embeddings", "rope_parameters", "attention_bias", "use_qk_norm",
                 "head_dim", "use_embedding_sharing"}


def cohere2_text_config(tc: Any) -> TowerConfig:
    """A Cohere2Config (``text_config.model_type == "cohere2"``) -> our TowerConfig, ``logit_scale`` included."""
    if tc.model_type != "cohere2":
        raise UnsupportedConfigError(f"text_config.model_type={tc.model_type!r} is not a Cohere2 language model")
    check_fields(tc, COHERE2_FIELDS, "text_config (cohere2)", COHERE2_IGNORED, COHERE2_PINNED)
    rope = _shared_checks(tc, "text_config (cohere2)")
    layer_types = tuple(tc.layer_types)
    unknown = sorted(set(layer_types) - set(LAYER_KINDS))
    if unknown:
        raise UnsupportedConfigError(f"text_config (cohere2): layer_types holds {unknown}; HF's Cohere2 knows "
                                     f"{', '.join(LAYER_KINDS)}")
    sliding = "sliding_attention" in layer_types
    if sliding and tc.sliding_window is None:
        raise UnsupportedConfigError("text_config (cohere2): sliding_attention layers with sliding_window=None")
    return TowerConfig(
        n_layers=tc.num_hidden_layers, d_model=tc.hidden_size, n_heads=tc.num_attention_heads,
        n_key_value_heads=tc.num_key_value_heads, d_head=tc.hidden_size // tc.num_attention_heads,
        d_mlp=tc.intermediate_size, act_fn=tc.hidden_act, gated_mlp=True,
        normalization_type="LN", norm_bias=False, norm_eps=tc.layer_norm_eps,
        attn_bias=bool(tc.attention_bias), attn_out_bias=bool(tc.attention_bias), mlp_bias=False,
        causal=True, positional="rope", rope_parameters=rope, rope_interleaved=True,
        max_position_embeddings=tc.max_position_embeddings,
        sliding_window=tc.sliding_window if sliding else None,
        layer_types=layer_types,
        layer_rope_parameters={"sliding_attention": rope, "full_attention": None},  # full layers: NoPE
        parallel_block=True, logit_scale=float(tc.logit_scale),
    )


def cohere_text_config(tc: Any) -> TowerConfig:
    """A CohereConfig (``text_config.model_type == "cohere"``) -> our TowerConfig, ``logit_scale`` included (None,
    which HF's CohereForCausalLM cannot multiply by, becomes 1.0: the VLM wrappers never read it)."""
    if tc.model_type != "cohere":
        raise UnsupportedConfigError(f"text_config.model_type={tc.model_type!r} is not a Cohere language model")
    pinned = {k: v for k, v in COHERE2_PINNED.items() if k not in ("use_qk_norm", "order_of_interleaved_layers")}
    check_fields(tc, COHERE_FIELDS, "text_config (cohere)", COHERE2_IGNORED, pinned)
    rope = _shared_checks(tc, "text_config (cohere)")
    return TowerConfig(
        n_layers=tc.num_hidden_layers, d_model=tc.hidden_size, n_heads=tc.num_attention_heads,
        n_key_value_heads=tc.num_key_value_heads,
        d_head=getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads,
        d_mlp=tc.intermediate_size, act_fn=tc.hidden_act, gated_mlp=True,
        normalization_type="LN", norm_bias=False, norm_eps=tc.layer_norm_eps,
        attn_bias=bool(tc.attention_bias), attn_out_bias=bool(tc.attention_bias), mlp_bias=False,
        causal=True, positional="rope", rope_parameters=rope, rope_interleaved=True,
        max_position_embeddings=tc.max_position_embeddings,
        qk_norm="LN" if tc.use_qk_norm else None, qk_norm_per_head=True,  # CohereLayerNorm((heads, head_dim))
        parallel_block=True, logit_scale=1.0 if tc.logit_scale is None else float(tc.logit_scale),
    )


def _shared_checks(tc: Any, where: str) -> dict[str, Any]:
    """The checks both Cohere LMs share; returns the RoPE parameters."""
    sharing = getattr(tc, "use_embedding_sharing", None)
    if sharing is not None and bool(sharing) != bool(tc.tie_word_embeddings):
        raise UnsupportedConfigError(f"{where}: use_embedding_sharing={sharing!r} disagrees with "
                                     f"tie_word_embeddings={tc.tie_word_embeddings!r}, which HF reads; make them equal")
    if tc.layer_norm_eps is None:
        raise UnsupportedConfigError(f"{where}: layer_norm_eps=None; HF's CohereLayerNorm needs a number")
    rope = dict(tc.rope_parameters or {"rope_type": "default", "rope_theta": 10000.0})
    check_rope_type(rope, where)
    return rope


#: text_config.model_type -> its TowerConfig builder (both use :func:`cohere2_rules`)
COHERE_LMS = {"cohere2": cohere2_text_config, "cohere": cohere_text_config}


def cohere_lm_config(tc: Any) -> TowerConfig:
    """The TowerConfig of either Cohere LM, by ``text_config.model_type``."""
    if tc.model_type not in COHERE_LMS:
        raise UnsupportedConfigError(f"text_config.model_type={tc.model_type!r} is a language model this converter does "
                                     f"not build; supported: {', '.join(sorted(COHERE_LMS))}")
    return COHERE_LMS[tc.model_type](tc)


def cohere2_rules(prefix: str) -> list[tuple[str, str]]:
    """Key rules for an HF Cohere2Model / CohereModel under ``prefix`` (e.g. 'model.language_model') + the ``lm_head``
    (Cohere's per-head q/k norm weights included: they exist only when use_qk_norm)."""
    p = re.escape(prefix)
    return [
        (rf"{p}\.embed_tokens\.weight", "embed.weight"),
        (rf"{p}\.layers\.(\d+)\.self_attn\.(q|k|v|o)_proj\.(weight|bias)", r"blocks.\1.attn.\2_proj.\3"),
        (rf"{p}\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight", r"blocks.\1.mlp.\2_proj.weight"),
        (rf"{p}\.layers\.(\d+)\.self_attn\.(q|k)_norm\.weight", r"blocks.\1.attn.\2_norm.w"),
        (rf"{p}\.layers\.(\d+)\.input_layernorm\.weight", r"blocks.\1.ln1.w"),
        (rf"{p}\.norm\.weight", "ln_final.w"),
        (r"lm_head\.weight", "unembed.weight"),
    ]
