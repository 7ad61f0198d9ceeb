"""Fixed-size square images -> ViT -> a projector that pools the patch grid (Gemma 3: 64x64 patches -> 16x16 tokens).

The layout of each image is the POOLED grid (``cfg.projector.extra["tokens_per_side"]``), so spans give every image
token its (row, col) on that grid. Pan-and-scan crops arrive as more images, each its own ``image.{i}``: the processor
puts every image first and its crops right after it. With ``num_crops`` ([n_original_images], the image processor's
count, which ``model.prepare_inputs`` passes on) each crop's layout says which image it was cut from and which crop
it is (``ImageLayout.crop_of`` / ``crop_index``; span ``crop``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..spans import ImageLayout
from .base import check_square_pixels, register_pipeline

if TYPE_CHECKING:
    from ..model import HookedVLM


def pooled_layouts(model: "HookedVLM", pixel_values: torch.Tensor, extras: dict) -> list[ImageLayout]:
    """One pooled ``tokens_per_side`` grid per image; pan-and-scan crops marked from ``num_crops``."""
    check_square_pixels(model, pixel_values)
    side = int(model.cfg.projector.extra["tokens_per_side"])
    if extras.get("num_crops") is None:
        return [ImageLayout(rows=side, cols=side) for _ in range(pixel_values.shape[0])]
    return crop_layouts(model, extras["num_crops"], extras.get("input_ids"), side, pixel_values.shape[0])


@register_pipeline("vit_pooled", layouts=pooled_layouts)
def vit_pooled(model: "HookedVLM", pixel_values: torch.Tensor, extras: dict) -> tuple[torch.Tensor, list[ImageLayout]]:
    layouts = pooled_layouts(model, pixel_values, extras)
    embeds = model.projector(model.vision(pixel_values))  # [image, tokens, d_model]
    return embeds.reshape(-1, embeds.shape[-1]), layouts


def crop_layouts(model: "HookedVLM", num_crops: torch.Tensor, input_ids: torch.Tensor | None, side: int,
                 n_images: int) -> list[ImageLayout]:
    """Layouts of [original 0, its crops, original 1, its crops, ...]; ``crop_of`` counts images within each item."""
    crops = [int(c) for c in torch.as_tensor(num_crops).flatten().tolist()]
    if sum(crops) + len(crops) != n_images or any(c < 0 for c in crops):
        raise ValueError(f"num_crops {crops} says {sum(crops) + len(crops)} images (each original + its crops) but "
                         f"pixel_values holds {n_images}; pass the num_crops of the same processor call")
    per_item = None
    if input_ids is not None:  # images per batch item: the item's image tokens / tokens per image
        per_item = ((input_ids == model.cfg.roles.image_token_id).sum(1) // (side * side)).tolist()
    layouts, item, start = [], 0, 0  # start: index of the item's first image in the flat list
    for k in crops:
        while per_item is not None and item < len(per_item) and len(layouts) - start >= per_item[item]:
            start += per_item[item]
            item += 1
        original = len(layouts) - start
        layouts.append(ImageLayout(rows=side, cols=side))
        layouts += [ImageLayout(rows=side, cols=side, crop_of=original, crop_index=j) for j in range(k)]
    return layouts
