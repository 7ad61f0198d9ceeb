"""LlavaNextForConditionalGeneration (LLaVA-NeXT / 1.6: anyres tiles + image_newline; CLIP or SigLIP tower)."""

from __future__ import annotations

from ._anyres import ANYRES_ALIASES, ANYRES_FIELDS, anyres_check, anyres_extra
from .llava_like import LlavaLike

CONVERTER = LlavaLike(
    architecture="LlavaNextForConditionalGeneration",
    fields=ANYRES_FIELDS,
    towers=("clip_vision_model", "siglip_vision_model"),
    projector="anyres_mlp",
    aliases=ANYRES_ALIASES,
    check=anyres_check,
    extra=anyres_extra,
).converter()
