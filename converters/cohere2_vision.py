"""Cohere2VisionForConditionalGeneration (CohereLabs/command-a-vision-07-2025): SigLIP + pixel-shuffle SwiGLU + Cohere2.

A declaration: the SigLIP tower read at ``last_hidden_state`` (HF's Cohere2VisionModel.get_image_features), i.e.
AFTER post_layernorm (the ``vit_post_norm`` tower kind, as Gemma 3 reads SigLIP), the ``pixel_shuffle`` projector in
its SwiGLU form without a norm (pixel shuffle by ``downsample_factor`` -> ``linear_1`` to
``alignment_intermediate_size`` -> ``silu(gate) * x`` -> ``linear_2``), the Cohere2 LM (``_cohere2``; HF's VLM
forward applies no ``logit_scale``, so it is 1.0 here, see converters/aya_vision.py) and the ``tiles_marked`` pipeline.

Prompts (Cohere2VisionProcessor): ``<|START_OF_IMG|>`` + n_tiles x (tokens_per_tile x ``<|IMG_PATCH|>`` +
``<|IMG_LINE_BREAK|>``) + ``<|END_OF_IMG|>``; tiles are the crops (row-major) and, with more than one, a thumbnail
last. The image processor (Cohere2VisionImageProcessor) imports torchvision: without it the processor does not load
(``model.prepare_inputs`` says so) and inputs are built elsewhere; the tokenizer alone still gives the marker ids.
Spans: ``boi`` / ``eoi``, ``tile_break`` (``<|IMG_LINE_BREAK|>``), ``thumbnail``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hooked_vlm.config import HookedVLMConfig, ProjectorConfig, TokenRoles, VisionConfig

from ._cohere2 import cohere2_rules
from .parts import lm_part
from ._siglip import SIGLIP_VISION_FIELDS, siglip_ignored, siglip_rules
from ._vit import post_layernorm_rules, vit_tower
from .aya_vision import ALIASES, check_shuffle
from .base import Converter, KeyMap, UnsupportedConfigError, check_fields

TOP_FIELDS = {"downsample_factor", "image_token_id", "alignment_intermediate_size", "tie_word_embeddings"}
#: tokenizer attribute -> the token string the processor writes (used when only the tokenizer files can be read)
MARKERS = {"boi_token": "<|START_OF_IMG|>", "eoi_token": "<|END_OF_IMG|>", "img_line_break_token": "<|IMG_LINE_BREAK|>"}


def cohere2_vision_config(hf: Any) -> HookedVLMConfig:
    check_fields(hf, TOP_FIELDS, type(hf).__name__)
    vc, tc = hf.vision_config, hf.text_config
    if vc.model_type != "siglip_vision_model":
        raise UnsupportedConfigError(f"{type(hf).__name__}: vision_config.model_type={vc.model_type!r} is a tower this "
                                     "converter does not build; supported: siglip_vision_model")
    check_fields(vc, SIGLIP_VISION_FIELDS, "vision_config (siglip_vision_model)")
    vision = VisionConfig(tower=vit_tower(vc), image_size=vc.image_size, patch_size=vc.patch_size, kind="vit_post_norm",
                          n_channels=vc.num_channels, class_token=False, patch_bias=True, ln_pre=False,
                          feature_layers=(-1,), feature_select="full")
    check_shuffle(vision.grid_size, hf.downsample_factor)
    text = dataclasses.replace(lm_part(tc, ("cohere2", "cohere"), "Cohere2VisionConfig").config(tc), logit_scale=1.0)  # HF's VLM forward never applies it
    if not 0 <= hf.image_token_id < tc.vocab_size:
        raise UnsupportedConfigError(f"image_token_id={hf.image_token_id} is outside the vocabulary ({tc.vocab_size})")
    projector = ProjectorConfig(
        d_in=vc.hidden_size, d_out=text.d_model, act_fn="silu", bias=True, kind="pixel_shuffle",
        extra={"scale_factor": hf.downsample_factor, "mlp": "swiglu", "norm": False,
               "d_hidden": hf.alignment_intermediate_size})
    return HookedVLMConfig(
        architecture="Cohere2VisionForConditionalGeneration", text=text, d_vocab=tc.vocab_size, vision=vision,
        projector=projector,
        roles=TokenRoles(image_token_id=hf.image_token_id, pad_token_id=tc.pad_token_id, bos_token_id=tc.bos_token_id,
                         eos_token_id=tc.eos_token_id),
        tie_word_embeddings=bool(hf.tie_word_embeddings),
        extra={"image_pipeline": "tiles_marked"},
    )


def cohere2_vision_finalize(cfg: HookedVLMConfig, processor: Any) -> None:
    """Marker ids from the tokenizer (its boi_token / eoi_token / img_line_break_token; from the tokenizer files, the
    processor's default strings). Nothing without a tokenizer."""
    from hooked_vlm.processors import marker_vocab

    vocab = marker_vocab(processor)
    tok = getattr(vocab, "tokenizer", vocab)
    if tok is None:
        return
    ids = {}
    for attr, default in MARKERS.items():
        token_id = tok.convert_tokens_to_ids(getattr(tok, attr, None) or default)
        ids[attr] = None if token_id is None or token_id == getattr(tok, "unk_token_id", None) else int(token_id)
    if ids["boi_token"] is None or ids["eoi_token"] is None:
        return
    cfg.roles.boi_token_id, cfg.roles.eoi_token_id = ids["boi_token"], ids["eoi_token"]
    # no image_markers check (span_checks): a tile marker / line break sits between the markers and the image
    # tokens; the tiles_marked pipeline checks instead that every image is closed and holds whole tiles
    if ids["img_line_break_token"] is not None:
        cfg.roles.extra["tile_break"] = (ids["img_line_break_token"],)


def cohere2_vision_keymap(cfg: HookedVLMConfig) -> KeyMap:
    vt, mp = "model.vision_tower", r"model\.multi_modal_projector"
    ignored = [(pattern, reason) for pattern, reason in siglip_ignored(vt) if "post_layernorm" not in pattern]
    return KeyMap(aliases=ALIASES, rules=cohere2_rules("model.language_model") + siglip_rules(vt)
                  + post_layernorm_rules(vt) + [(rf"{mp}\.linear_(1|2)\.(weight|bias)", r"projector.linear_\1.\2")],
                  ignored=ignored)


CONVERTER = Converter(architectures=("Cohere2VisionForConditionalGeneration",), make_config=cohere2_vision_config,
                      make_keymap=cohere2_vision_keymap, finalize=cohere2_vision_finalize)
