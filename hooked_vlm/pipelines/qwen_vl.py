"""Qwen2-VL / Qwen2.5-VL: packed native-resolution patches -> ViT -> patch merger, grids from image_grid_thw."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..spans import ImageLayout
from .base import register_pipeline

if TYPE_CHECKING:
    from ..model import HookedVLM


def qwen_layouts(model: "HookedVLM", pixel_values: torch.Tensor, extras: dict) -> list[ImageLayout]:
    """Every image is ``t x (h / merge) x (w / merge)`` LM tokens (one tile per frame), from ``image_grid_thw``."""
    grid = check_qwen_inputs(model, pixel_values, extras)
    merge = model.cfg.vision.extra["spatial_merge_size"]
    return [ImageLayout(rows=h // merge, cols=w // merge, tiles=t) for t, h, w in grid.tolist()]


@register_pipeline("qwen_vl", layouts=qwen_layouts)
def qwen_vl(model: "HookedVLM", pixel_values: torch.Tensor, extras: dict) -> tuple[torch.Tensor, list[ImageLayout]]:
    """Every image is ``t x (h / merge) x (w / merge)`` LM tokens (one tile per frame), row-major."""
    layouts = qwen_layouts(model, pixel_values, extras)
    grid = check_qwen_inputs(model, pixel_values, extras)
    embeds = model.projector(model.vision(pixel_values, grid.to(pixel_values.device)))
    return embeds.reshape(-1, embeds.shape[-1]), layouts


def check_qwen_inputs(model: "HookedVLM", pixel_values: torch.Tensor, extras: dict) -> torch.Tensor:
    """image_grid_thw as a LongTensor, after checking it against the packed pixel_values."""
    vcfg = model.cfg.vision
    grid = extras.get("image_grid_thw")
    if grid is None:
        raise ValueError("Qwen2-VL needs image_grid_thw [n_images, 3] next to pixel_values; pass the image "
                         "processor's whole output (model.prepare_inputs(images=..., text=...))")
    grid = torch.as_tensor(grid).long()
    tp, merge = vcfg.extra["temporal_patch_size"], vcfg.extra["spatial_merge_size"]
    # the grid first: a wrong grid would otherwise be reported as wrong pixel_values
    if grid.ndim != 2 or grid.shape[1] != 3 or bool((grid <= 0).any()) or bool((grid[:, 1:] % merge).any()):
        raise ValueError(f"image_grid_thw must be [n_images, 3] (t, h, w) with every entry > 0 and h and w multiples "
                         f"of {merge}; got {grid.tolist()}")
    width = vcfg.n_channels * tp * vcfg.patch_size**2
    n_patches = int(grid.prod(-1).sum())
    if pixel_values.ndim != 2 or pixel_values.shape[1] != width or pixel_values.shape[0] != n_patches:
        raise ValueError(f"pixel_values has shape {tuple(pixel_values.shape)}; with image_grid_thw={grid.tolist()} "
                         f"this model expects flattened patches [{n_patches}, {width}] (the Qwen2-VL image processor's output)")
    return grid
