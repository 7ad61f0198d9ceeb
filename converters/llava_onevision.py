"""LlavaOnevisionForConditionalGeneration (anyres_max_N tiles + image_newline; SigLIP tower; Qwen2 LM).

Images only: video inputs (pixel_values_videos) are refused by the forward's input check.
"""

from __future__ import annotations

from typing import Any

from .base import UnsupportedConfigError
from ._anyres import ANYRES_ALIASES, ANYRES_FIELDS, anyres_check, anyres_extra
from .llava_like import LlavaLike


def _check(hf: Any) -> None:
    aspect = hf.vision_aspect_ratio
    if not (isinstance(aspect, str) and aspect.startswith("anyres_max_") and aspect[len("anyres_max_"):].isdigit()):
        raise UnsupportedConfigError(f"LlavaOnevisionConfig: vision_aspect_ratio={aspect!r}; supported: 'anyres_max_<N>' "
                                     "(HF reads N, the most tiles before the grid is shrunk, from it)")
    anyres_check(hf)


CONVERTER = LlavaLike(
    architecture="LlavaOnevisionForConditionalGeneration",
    fields=ANYRES_FIELDS | {"video_token_index", "video_token_id", "vision_aspect_ratio"},
    towers=("clip_vision_model", "siglip_vision_model"),
    projector="anyres_mlp",
    aliases=ANYRES_ALIASES,
    check=_check,
    extra=lambda hf: {**anyres_extra(hf), "input_keys": ("image_sizes", "batch_num_images"),
                      "vision_aspect_ratio": hf.vision_aspect_ratio, "multi_image_base_only": True},
    role_extra=lambda hf: {"video": (hf.video_token_id,)},
).converter()
