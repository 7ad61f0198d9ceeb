"""What LLaVA-NeXT and LLaVA-OneVision share beyond the LLaVA-like declaration: the "anyres" image pipeline (tiles of
``image_grid_pinpoints`` + ``image_newline``) and its checks."""

from __future__ import annotations

from typing import Any

from .base import UnsupportedConfigError
from .llava_like import LLAVA_ALIASES

ANYRES_FIELDS = frozenset({
    "image_token_index", "image_token_id", "projector_hidden_act", "vision_feature_layer",
    "vision_feature_select_strategy", "image_grid_pinpoints", "image_seq_length", "multimodal_projector_bias",
    "tie_word_embeddings", "ignore_index",
    "use_image_newline_parameter",  # in hub configs; HF's code always uses image_newline
    "vocab_size"})  # legacy copy of text_config.vocab_size (checked equal)
ANYRES_ALIASES = LLAVA_ALIASES + ((r"^image_newline$", "model.image_newline"),)


def anyres_check(hf: Any) -> None:
    select = hf.vision_feature_select_strategy
    if hf.vision_config.model_type == "clip_vision_model" and select != "default":
        raise UnsupportedConfigError(
            f"{type(hf).__name__}: vision_feature_select_strategy={select!r} with a CLIP tower; anyres needs "
            "'default': 'full' keeps CLIP's class token, and the tile grid has no room for it (HF's own "
            "reshape into tiles fails)")


def anyres_extra(hf: Any) -> dict[str, Any]:
    return {"image_pipeline": "anyres", "image_grid_pinpoints": [list(p) for p in hf.image_grid_pinpoints],
            "input_keys": ("image_sizes",)}
