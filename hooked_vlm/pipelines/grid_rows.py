"""Packed native-resolution patches -> ViT -> a merger whose tokens per image are ``begin, (h / m) rows of (w / m)
merged cells + a row break, end`` (HunYuanVL): grids from ``image_grid_thw``, the merger called with them.

Layout of one image (``ImageLayout``): ``n_prefix=1`` (the learned begin embedding), the ``(h / m) x (w / m)`` grid,
``newline_offsets`` (span ``row_break``) after each row, ``n_suffix=1`` (the learned end embedding); all of them sit at
image placeholder tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..spans import ImageLayout
from .base import register_pipeline
from .qwen_vl import check_qwen_inputs

if TYPE_CHECKING:
    from ..model import HookedVLM


def grid_rows_layouts(model: "HookedVLM", pixel_values: torch.Tensor, extras: dict) -> list[ImageLayout]:
    grid = check_qwen_inputs(model, pixel_values, extras)
    if bool((grid[:, 0] != 1).any()):
        raise ValueError(f"image_grid_thw {grid.tolist()}: every image must be one frame (t = 1); videos are not "
                         "supported")
    merge = model.cfg.vision.extra["spatial_merge_size"]
    out = []
    for _, h, w in grid.tolist():
        rows, cols = h // merge, w // merge
        out.append(ImageLayout(rows=rows, cols=cols, n_prefix=1, n_suffix=1,
                               newline_offsets=[1 + r * (cols + 1) + cols for r in range(rows)]))
    return out


@register_pipeline("grid_rows", layouts=grid_rows_layouts)
def grid_rows(model: "HookedVLM", pixel_values: torch.Tensor, extras: dict) -> tuple[torch.Tensor, list[ImageLayout]]:
    layouts = grid_rows_layouts(model, pixel_values, extras)
    grid = check_qwen_inputs(model, pixel_values, extras).to(pixel_values.device)
    embeds = model.projector(model.vision(pixel_values, grid), grid)
    return embeds.reshape(-1, embeds.shape[-1]), layouts
