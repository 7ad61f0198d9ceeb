"""PaliGemmaForConditionalGeneration with a Gemma 2 LM (PaliGemma 2: google/paligemma2-3b-pt-224 ...).

SigLIP tower (last_hidden_state: after post_layernorm) -> one linear layer (``linear`` projector; HF 5.23 splices the
features unscaled: the 1/sqrt(d_model) of older versions is gone together with the embedding normaliser) -> Gemma 2.
Gemma 2's differences are config fields of the shared components: sandwich norms with ``(1 + w)`` in float32,
embeddings x sqrt(d_model), alternating sliding / full layers (``layer_types``), attention scale
``query_pre_attn_scalar ** -0.5``, tanh soft-capping of the attention scores (``attn_logit_softcap``: every forward
takes the explicit attention path, as HF's eager path) and of the final logits (``final_logit_softcap``).
PaliGemma's own: positions start at 1 (``position_offset``), and the prefix-LM mask (``mask_policy="prefix"``): with
``token_type_ids`` (the processor always returns them) image + prefix text (type 0) attend to each other in both
directions, the suffix (type 1, the ``suffix=`` of the processor, and generated tokens) is causal.
Refused: a Gemma 1 LM (PaliGemma 1: not verified here), an image token id outside the vocabulary, a projector
whose output is not the LM width.
"""

from __future__ import annotations

import re
from typing import Any

from hooked_vlm.components.rope import STATIC_ROPE_TYPES
from hooked_vlm.config import HookedVLMConfig, ProjectorConfig, TokenRoles, TowerConfig, VisionConfig

from ._siglip import SIGLIP_VISION_FIELDS, siglip_ignored, siglip_rules
from ._vit import post_layernorm_rules, vit_tower
from .base import Converter, KeyMap, UnsupportedConfigError, check_fields

PALIGEMMA_FIELDS = {"image_token_index", "projection_dim", "tie_word_embeddings"}
PALIGEMMA_IGNORED = {
    "hidden_activation": "older PaliGemma / Gemma configs carry it; HF 5.23's Gemma MLP reads hidden_act only",
    "ignore_index": "a legacy training field of PaliGemma configs (-100 in the published files); HF 5.23's PaliGemma "
                    "code never reads it (the loss uses the labels' own -100)",
    "vocab_size": "a top-level copy (default 257152); HF's PaliGemma reads text_config.vocab_size only",
    "hidden_size": "a top-level copy (default 2048); HF's PaliGemma reads text_config.hidden_size only",
}
GEMMA2_FIELDS = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "hidden_activation", "max_position_embeddings", "rms_norm_eps",
                 "tie_word_embeddings", "rope_parameters", "attention_bias", "query_pre_attn_scalar", "sliding_window",
                 "layer_types", "final_logit_softcapping", "attn_logit_softcapping"}
GEMMA_FIELDS = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
                "tie_word_embeddings", "rope_parameters", "attention_bias"}
GEMMA2_IGNORED = {
    "hidden_act": "published Gemma 2 configs carry it beside hidden_activation; HF 5.23's Gemma 2 reads "
                  "hidden_activation only",
    "cache_implementation": "a generation setting of published Gemma 2 configs ('hybrid'); the forward never reads it",
    "num_image_tokens": "PaliGemmaConfig writes (image_size // patch_size) ** 2 into the text config; Gemma 2 never "
                        "reads it (the placeholder count is checked against the image features instead)",
    "use_bidirectional_attention": "PaliGemmaConfig sets it True; Gemma 2's eager attention (the only one HF allows "
                                   "with soft-capping) always receives a materialised mask, so only that mask "
                                   "(the prefix-LM policy, built from token_type_ids) decides what is attended to",
}
GEMMA_IGNORED = {
    "hidden_activation": "older PaliGemma / Gemma configs carry it; HF 5.23's Gemma MLP reads hidden_act only",
    "num_image_tokens": GEMMA2_IGNORED["num_image_tokens"],
    "use_bidirectional_attention": "PaliGemmaConfig sets it True; it only switches SDPA's is_causal when HF skips the "
                                   "mask (no token_type_ids, no padding: HF's SDPA then attends bidirectionally, its "
                                   "eager path causally); with token_type_ids, as the processor gives, the prefix-LM "
                                   "mask decides on every HF path -- see docs/families.md",
}
VISION_IGNORED = {
    "projection_dim": "PaliGemmaConfig copies its projection_dim here; the SigLIP tower never reads it",
    "num_image_tokens": "a legacy copy of (image_size // patch_size) ** 2 in published PaliGemma configs; SigLIP and "
                        "PaliGemma in HF 5.23 never read it",
    "projector_hidden_act": "a legacy field of published PaliGemma configs; the projector is one linear layer with no "
                            "activation, and HF 5.23 never reads it",
}

# save_pretrained writes the legacy layout; the in-memory (and newer hub) layout is under "model."
PALIGEMMA_ALIASES = [
    (r"^language_model\.model\.", "model.language_model."),
    (r"^language_model\.lm_head\.", "lm_head."),
    (r"^vision_tower\.", "model.vision_tower."),
    (r"^multi_modal_projector\.", "model.multi_modal_projector."),
]


def _rope(tc: Any) -> dict:
    rope = dict(tc.rope_parameters or {"rope_type": "default", "rope_theta": 10000.0})
    if rope.get("rope_type", "default") not in STATIC_ROPE_TYPES:
        raise UnsupportedConfigError(f"rope_parameters={rope!r}; supported rope types: {STATIC_ROPE_TYPES}")
    return rope


def gemma_text_config(tc: Any) -> TowerConfig:
    """PaliGemma 1's Gemma LM: pre-norm blocks, (1 + w) RMSNorm, embeddings x sqrt(d_model), attention scale
    head_dim ** -0.5, no soft-capping, no sliding window."""
    check_fields(tc, GEMMA_FIELDS, "text_config (gemma)", ignored=GEMMA_IGNORED)
    return TowerConfig(
        n_layers=tc.num_hidden_layers, d_model=tc.hidden_size, n_heads=tc.num_attention_heads,
        n_key_value_heads=tc.num_key_value_heads, d_head=tc.head_dim, d_mlp=tc.intermediate_size,
        act_fn=tc.hidden_act, gated_mlp=True, normalization_type="RMS", norm_eps=tc.rms_norm_eps,
        attn_bias=bool(tc.attention_bias), attn_out_bias=bool(tc.attention_bias), causal=True, positional="rope",
        rope_parameters=_rope(tc), max_position_embeddings=tc.max_position_embeddings, norm_offset=1.0,
        embed_scale=float(tc.hidden_size) ** 0.5, mask_policy="prefix", mask_policy_input="token_type_ids",
        position_offset=1,
    )


def gemma2_text_config(tc: Any) -> TowerConfig:
    if tc.model_type == "gemma":
        return gemma_text_config(tc)
    if tc.model_type != "gemma2":
        raise UnsupportedConfigError(f"PaliGemma with a {tc.model_type!r} language model; supported: gemma2 "
                                     "(PaliGemma 2), gemma (PaliGemma 1)")
    check_fields(tc, GEMMA2_FIELDS, "text_config (gemma2)", ignored=GEMMA2_IGNORED)
    rope = _rope(tc)
    layer_types = tuple(tc.layer_types)
    return TowerConfig(
        n_layers=tc.num_hidden_layers, d_model=tc.hidden_size, n_heads=tc.num_attention_heads,
        n_key_value_heads=tc.num_key_value_heads, d_head=tc.head_dim, d_mlp=tc.intermediate_size,
        act_fn=tc.hidden_activation, gated_mlp=True, normalization_type="RMS", norm_eps=tc.rms_norm_eps,
        attn_bias=bool(tc.attention_bias), attn_out_bias=bool(tc.attention_bias), causal=True, positional="rope",
        rope_parameters=rope, max_position_embeddings=tc.max_position_embeddings,
        attn_scale=float(tc.query_pre_attn_scalar) ** -0.5,
        sliding_window=tc.sliding_window if "sliding_attention" in layer_types else None,
        norm_placement="sandwich", norm_offset=1.0, embed_scale=float(tc.hidden_size) ** 0.5, layer_types=layer_types,
        mask_policy="prefix", mask_policy_input="token_type_ids", position_offset=1,
        attn_logit_softcap=tc.attn_logit_softcapping, final_logit_softcap=tc.final_logit_softcapping,
    )


def paligemma_vision_config(vc: Any) -> VisionConfig:
    if vc.model_type != "siglip_vision_model":
        raise UnsupportedConfigError(f"PaliGemma with a {vc.model_type!r} vision tower; supported: siglip_vision_model")
    check_fields(vc, SIGLIP_VISION_FIELDS, "vision_config (siglip_vision_model)", ignored=VISION_IGNORED)
    # PaliGemma reads SigLIP's last_hidden_state, which is AFTER post_layernorm (the pooling head is never used)
    return VisionConfig(tower=vit_tower(vc), image_size=vc.image_size, patch_size=vc.patch_size, kind="vit_post_norm",
                        n_channels=vc.num_channels, class_token=False, patch_bias=True, ln_pre=False,
                        feature_layers=(-1,), feature_select="full")


def paligemma_config(hf: Any) -> HookedVLMConfig:
    check_fields(hf, PALIGEMMA_FIELDS, "PaliGemmaConfig", ignored=PALIGEMMA_IGNORED)
    tc, vc = hf.text_config, hf.vision_config
    text, vision = gemma2_text_config(tc), paligemma_vision_config(vc)
    if hf.projection_dim != tc.hidden_size:
        raise UnsupportedConfigError(f"projection_dim={hf.projection_dim} differs from text_config.hidden_size="
                                     f"{tc.hidden_size}: the projected image features could not be spliced into the LM")
    if not 0 <= hf.image_token_index < tc.vocab_size:
        raise UnsupportedConfigError(f"image_token_index={hf.image_token_index} outside the vocabulary "
                                     f"({tc.vocab_size}) is not supported")
    eos = hf.eos_token_id if getattr(hf, "eos_token_id", None) is not None else tc.eos_token_id
    return HookedVLMConfig(
        architecture="PaliGemmaForConditionalGeneration",
        text=text,
        d_vocab=tc.vocab_size,
        vision=vision,
        projector=ProjectorConfig(d_in=vc.hidden_size, d_out=hf.projection_dim, bias=True, kind="linear"),
        roles=TokenRoles(image_token_id=hf.image_token_index, pad_token_id=tc.pad_token_id,
                         bos_token_id=tc.bos_token_id, eos_token_id=eos),
        tie_word_embeddings=bool(hf.tie_word_embeddings),  # HF ties from the top-level config
        extra={"image_pipeline": "vit_mlp", "input_keys": ("token_type_ids",), "prepare_inputs_fn": paligemma_prepare_inputs},
    )


def paligemma_prepare_inputs(model: Any, images: Any = None, text: list[str] | None = None, **kwargs: Any) -> Any:
    """The processor's output without ``labels`` (HF's training targets: input_ids with the prefix set to -100, made
    when ``suffix=`` is given); ``token_type_ids`` (prefix 0 / suffix 1) carry the same split into the mask and spans."""
    out = model.processor(images=images, text=text, return_tensors="pt", **kwargs)
    return {k: v for k, v in dict(out).items() if k != "labels"}


def paligemma_keymap(cfg: HookedVLMConfig) -> KeyMap:
    lm, vt = "model.language_model", "model.vision_tower"
    p = re.escape(lm)
    layer = rf"{p}\.layers\.(\d+)"
    if cfg.text.norm_placement == "sandwich":  # Gemma 2
        norms = {"input_layernorm": "ln1", "post_attention_layernorm": "ln1_post", "pre_feedforward_layernorm": "ln2",
                 "post_feedforward_layernorm": "ln2_post"}
    else:  # Gemma 1: pre-norm
        norms = {"input_layernorm": "ln1", "post_attention_layernorm": "ln2"}
    rules = [
        (rf"{p}\.embed_tokens\.weight", "embed.weight"),
        (rf"{layer}\.self_attn\.(q|k|v|o)_proj\.(weight|bias)", r"blocks.\1.attn.\2_proj.\3"),
        (rf"{layer}\.mlp\.(gate|up|down)_proj\.weight", r"blocks.\1.mlp.\2_proj.weight"),
        *[(rf"{layer}\.{hf}\.weight", rf"blocks.\1.{ours}.w") for hf, ours in norms.items()],
        (rf"{p}\.norm\.weight", "ln_final.w"),
        (r"lm_head\.weight", "unembed.weight"),
        (r"model\.multi_modal_projector\.linear\.(weight|bias)", r"projector.linear.\1"),
    ]
    ignored = [(pattern, reason) for pattern, reason in siglip_ignored(vt) if "post_layernorm" not in pattern]
    return KeyMap(aliases=PALIGEMMA_ALIASES, rules=rules + siglip_rules(vt) + post_layernorm_rules(vt), ignored=ignored)


CONVERTER = Converter(architectures=("PaliGemmaForConditionalGeneration",), make_config=paligemma_config,
                      make_keymap=paligemma_keymap)
