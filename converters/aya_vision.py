"""AyaVisionForConditionalGeneration (CohereLabs/aya-vision-8b, -32b): SigLIP + pixel-shuffle SwiGLU + Cohere2 / Cohere.

A declaration: the SigLIP tower (``_siglip``: HF reads ``hidden_states[vision_feature_layer]``, before
post_layernorm), the ``pixel_shuffle`` projector in its SwiGLU form (pixel shuffle by ``downsample_factor`` ->
LayerNorm (eps ``adapter_layer_norm_eps``) -> ``linear_1`` to ``alignment_intermediate_size`` -> ``silu(gate) * x``
-> ``linear_2``), the LM by ``text_config.model_type`` (``_cohere2``: "cohere2" for 8B, "cohere" for 32B) and the
``tiles_marked`` image pipeline. HF's
AyaVisionForConditionalGeneration applies its own ``lm_head`` without ``text_config.logit_scale``; we match HF, so
the LM's ``logit_scale`` is 1.0 here (the factor is a positive constant: argmax and greedy tokens are the same either
way, log-probabilities are not).

Prompts (the AyaVisionProcessor, GotOcr2 tiles): ``<|START_OF_IMG|>`` then, for an image cut into n > 1 crops,
``TILE_k`` + tokens_per_tile x ``<|IMG_PATCH|>`` for k = 1 .. n, and always ``TILE_GLOBAL`` + tokens_per_tile x
``<|IMG_PATCH|>`` (the thumbnail, last in pixel_values too), then ``<|END_OF_IMG|>``. Spans: ``boi`` / ``eoi``
(the image markers), ``tile_marker`` (``TILE_k`` where the tokenizer has it as one token), ``global_marker``
(``TILE_GLOBAL``), ``thumbnail``; marker ids come from the checkpoint's tokenizer (none without one).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hooked_vlm.config import HookedVLMConfig, ProjectorConfig, TokenRoles

from ._cohere2 import cohere2_rules
from .parts import lm_part
from ._siglip import siglip_ignored, siglip_rules, siglip_vision_config
from .base import Converter, KeyMap, UnsupportedConfigError, check_fields

TOP_FIELDS = {"vision_feature_select_strategy", "vision_feature_layer", "downsample_factor", "adapter_layer_norm_eps",
              "image_token_index", "image_token_id", "tie_word_embeddings",
              "alignment_intermediate_size"}  # read by HF's projector with getattr (default: text hidden_size)
# save_pretrained writes the legacy layout; the in-memory (and newer hub) layout is under "model."
ALIASES = [
    (r"^language_model\.model\.", "model.language_model."),
    (r"^language_model\.lm_head\.", "lm_head."),
    (r"^vision_tower\.", "model.vision_tower."),
    (r"^multi_modal_projector\.", "model.multi_modal_projector."),
]
MARKERS = {"boi": "<|START_OF_IMG|>", "eoi": "<|END_OF_IMG|>", "global_marker": "TILE_GLOBAL"}
MAX_TILES = 64  # TILE_k markers looked up in the tokenizer for k = 1 .. MAX_TILES


def check_shuffle(grid: int, factor: int) -> None:
    if factor < 1 or grid % factor:
        raise UnsupportedConfigError(f"downsample_factor={factor} must divide the {grid}x{grid} patch grid: the pixel "
                                     "shuffle folds factor x factor patches into one token (HF's reshape fails)")


def aya_vision_config(hf: Any) -> HookedVLMConfig:
    check_fields(hf, TOP_FIELDS, type(hf).__name__)
    vc, tc = hf.vision_config, hf.text_config
    if vc.model_type != "siglip_vision_model":
        raise UnsupportedConfigError(f"{type(hf).__name__}: vision_config.model_type={vc.model_type!r} is a tower this "
                                     "converter does not build; supported: siglip_vision_model")
    layer = hf.vision_feature_layer
    vision = siglip_vision_config(vc, (layer,) if isinstance(layer, int) else tuple(layer),
                                  hf.vision_feature_select_strategy)
    check_shuffle(vision.grid_size, hf.downsample_factor)
    # HF's VLM forward never multiplies by text_config.logit_scale (module docstring)
    text = dataclasses.replace(lm_part(tc, ("cohere2", "cohere"), "AyaVisionConfig").config(tc), logit_scale=1.0)
    if not 0 <= hf.image_token_id < tc.vocab_size:
        raise UnsupportedConfigError(f"image_token_index={hf.image_token_id} is outside the vocabulary ({tc.vocab_size})")
    d_hidden = getattr(hf, "alignment_intermediate_size", tc.hidden_size)
    projector = ProjectorConfig(
        d_in=vision.tower.d_model * len(vision.feature_layers), d_out=text.d_model, act_fn="silu", bias=True,
        kind="pixel_shuffle", extra={"scale_factor": hf.downsample_factor, "mlp": "swiglu", "norm": True,
                                     "norm_eps": hf.adapter_layer_norm_eps, "d_hidden": d_hidden})
    return HookedVLMConfig(
        architecture="AyaVisionForConditionalGeneration", text=text, d_vocab=tc.vocab_size, vision=vision,
        projector=projector,
        roles=TokenRoles(image_token_id=hf.image_token_id, pad_token_id=tc.pad_token_id, bos_token_id=tc.bos_token_id,
                         eos_token_id=tc.eos_token_id),
        tie_word_embeddings=bool(hf.tie_word_embeddings),  # HF ties lm_head to the embeddings on the top-level flag
        extra={"image_pipeline": "tiles_marked"},
    )


def aya_vision_finalize(cfg: HookedVLMConfig, processor: Any) -> None:
    """Marker ids from the checkpoint's tokenizer (spans boi / eoi / tile_marker / global_marker; the pipeline groups
    tiles into images by boi / eoi). Nothing without a tokenizer."""
    from hooked_vlm.processors import marker_vocab

    vocab = marker_vocab(processor)
    tok = getattr(vocab, "tokenizer", vocab)
    if tok is None:
        return
    ids = {name: _single_token(tok, text) for name, text in MARKERS.items()}
    if ids["boi"] is None or ids["eoi"] is None:
        return
    cfg.roles.boi_token_id, cfg.roles.eoi_token_id = ids["boi"], ids["eoi"]
    # no image_markers check (span_checks): a tile marker / line break sits between the markers and the image
    # tokens; the tiles_marked pipeline checks instead that every image is closed and holds whole tiles
    tiles = [i for i in (_single_token(tok, f"TILE_{k}") for k in range(1, MAX_TILES + 1)) if i is not None]
    if tiles:
        cfg.roles.extra["tile_marker"] = tuple(tiles)
    if ids["global_marker"] is not None:
        cfg.roles.extra["global_marker"] = (ids["global_marker"],)


def _single_token(tok: Any, text: str) -> int | None:
    """The id of ``text`` when the tokenizer has it as one token (not the unknown token), else None."""
    token_id = tok.convert_tokens_to_ids(text)
    unk = getattr(tok, "unk_token_id", None)
    return None if token_id is None or (unk is not None and token_id == unk) else int(token_id)


def aya_vision_keymap(cfg: HookedVLMConfig) -> KeyMap:
    vt, mp = "model.vision_tower", r"model\.multi_modal_projector"
    return KeyMap(aliases=ALIASES, rules=cohere2_rules("model.language_model") + siglip_rules(vt) + [
        (rf"{mp}\.layernorm\.weight", "projector.ln.w"),
        (rf"{mp}\.layernorm\.bias", "projector.ln.b"),
        (rf"{mp}\.linear_(1|2)\.(weight|bias)", r"projector.linear_\1.\2"),
    ], ignored=siglip_ignored(vt))


CONVERTER = Converter(architectures=("AyaVisionForConditionalGeneration",), make_config=aya_vision_config,
                      make_keymap=aya_vision_keymap, finalize=aya_vision_finalize)
