"""Gemma 4: patch lists of any size (``pixel_values`` [image, max_patches, 3 * patch ** 2] + ``image_position_ids``)
-> the gemma4_vision tower (components/gemma4_vision.py) -> its projector; each image's soft tokens are its pooled
cells in row-major order (``ImageLayout(rows, cols)`` of the pooled grid)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..spans import ImageLayout
from .base import register_pipeline

if TYPE_CHECKING:
    from ..model import HookedVLM


def _checked_positions(model: "HookedVLM", pixel_values: Tensor, extras: dict) -> Tensor:
    vcfg = model.cfg.vision
    positions = extras.get("image_position_ids")
    width = vcfg.n_channels * vcfg.patch_size**2
    if pixel_values.ndim != 3 or pixel_values.shape[-1] != width or positions is None:
        raise ValueError(f"pixel_values has shape {tuple(pixel_values.shape)}; this model takes patch lists [n_images, "
                         f"max_patches, {width}] plus image_position_ids [n_images, max_patches, 2] (Gemma4 image "
                         "processor's output; model.prepare_inputs makes both)")
    positions = torch.as_tensor(positions).to(pixel_values.device)
    if tuple(positions.shape) != (*pixel_values.shape[:2], 2):
        raise ValueError(f"image_position_ids has shape {tuple(positions.shape)}; expected "
                         f"{(*pixel_values.shape[:2], 2)} like pixel_values")
    return positions


def gemma4_layouts(model: "HookedVLM", pixel_values: Tensor, extras: dict) -> list[ImageLayout]:
    """Each image's pooled grid, from its patch positions alone (the tower is not run)."""
    positions = _checked_positions(model, pixel_values, extras)
    return [ImageLayout(rows=r, cols=c) for r, c in model.vision.grids(positions)]


@register_pipeline("gemma4_patches", layouts=gemma4_layouts)
def gemma4_patches(model: "HookedVLM", pixel_values: Tensor, extras: dict) -> tuple[Tensor, list[ImageLayout]]:
    positions = _checked_positions(model, pixel_values, extras)
    features, grids = model.vision(pixel_values, positions)
    return model.projector(features), [ImageLayout(rows=r, cols=c) for r, c in grids]
