"""Pixtral: images of different sizes -> one packed ViT sequence -> projector (optionally patch-merging).

Each image keeps its own patch grid (from ``image_sizes``); the image tokens of an image are its
grid cells in row-major order (the processor puts ``[IMG_BREAK]`` after each row and ``[IMG_END]``
after the last: ordinary tokens, roles ``row_break`` and ``eoi``). With a patch-merging projector
(Mistral3) the grid is the merged one (rows // s, cols // s).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor

from ..spans import ImageLayout
from .base import register_pipeline

if TYPE_CHECKING:
    from ..model import HookedVLM


def pixtral_grids(model: "HookedVLM", pixel_values: Float[Tensor, "image channel height width"], extras: dict
                  ) -> list[tuple[int, int]]:
    """Each image's patch grid (rows, cols) from ``image_sizes``, checked against the padded pixel batch."""
    vcfg = model.cfg.vision
    if pixel_values.ndim != 4 or pixel_values.shape[1] != vcfg.n_channels:
        raise ValueError(f"pixel_values has shape {tuple(pixel_values.shape)}; expected [n_images, {vcfg.n_channels}, "
                         "H, W] (padded to the largest image) plus image_sizes [n_images, 2]")
    image_sizes = extras.get("image_sizes")
    grids = model.vision.grids(pixel_values, image_sizes)
    if len(grids) != pixel_values.shape[0]:
        raise ValueError(f"{pixel_values.shape[0]} images but {len(grids)} image_sizes")
    p, (height, width) = vcfg.patch_size, pixel_values.shape[-2:]
    for i, (h, w) in enumerate(grids):
        if not (0 < h * p <= height and 0 < w * p <= width):
            raise ValueError(f"image_sizes[{i}] = {torch.as_tensor(image_sizes)[i].tolist()} (height, width) does not fit the "
                             f"pixel batch ({height}x{width}) or is smaller than one {p}x{p} patch; image_sizes must be "
                             "each image's true size inside the padded pixel_values (the processor's output)")
    return grids


def pixtral_layouts(model: "HookedVLM", pixel_values: Float[Tensor, "image channel height width"], extras: dict
                    ) -> list[ImageLayout]:
    """Each image's grid of LM tokens: its patch grid, or the merged grid (rows // s, cols // s) with a patch merger."""
    grids = pixtral_grids(model, pixel_values, extras)
    s = model.projector.merge if getattr(model.projector, "needs_grids", False) else 1
    return [ImageLayout(rows=h // s, cols=w // s) for h, w in grids]


@register_pipeline("pixtral", layouts=pixtral_layouts)
def pixtral(model: "HookedVLM", pixel_values: Float[Tensor, "image channel height width"], extras: dict
            ) -> tuple[Float[Tensor, "n d_model"], list[ImageLayout]]:
    layouts = pixtral_layouts(model, pixel_values, extras)
    grids = pixtral_grids(model, pixel_values, extras)
    features = model.vision(pixel_values, grids)  # [1, total_patches, d]
    if getattr(model.projector, "needs_grids", False):
        embeds = model.projector(features, grids)
    else:
        embeds = model.projector(features)[0]
    return embeds, layouts
