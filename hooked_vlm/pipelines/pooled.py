"""Fixed-size square images -> ViT -> a projector that pools the patch grid (Gemma 3: 64x64 patches -> 16x16 tokens).

The layout of each image is the POOLED grid (``cfg.projector.extra["tokens_per_side"]``), so spans give every image
token its (row, col) on that grid. Pan-and-scan crops arrive as more images: each is its own ``image.{i}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..spans import ImageLayout
from .base import check_square_pixels, register_pipeline

if TYPE_CHECKING:
    from ..model import HookedVLM


@register_pipeline("vit_pooled")
def vit_pooled(model: "HookedVLM", pixel_values: torch.Tensor, extras: dict) -> tuple[torch.Tensor, list[ImageLayout]]:
    check_square_pixels(model, pixel_values)
    embeds = model.projector(model.vision(pixel_values))  # [image, tokens, d_model]
    side = int(model.cfg.projector.extra["tokens_per_side"])
    layouts = [ImageLayout(rows=side, cols=side) for _ in range(pixel_values.shape[0])]
    return embeds.reshape(-1, embeds.shape[-1]), layouts
