"""LLaVA-1.5 style: one fixed-size square image -> ViT -> selected layers -> MLP projector."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..spans import ImageLayout
from .base import check_square_pixels, register_pipeline

if TYPE_CHECKING:
    from ..model import HookedVLM


def vit_mlp_layouts(model: "HookedVLM", pixel_values: torch.Tensor, extras: dict) -> list[ImageLayout]:
    """One g x g grid per image (plus the class token with ``feature_select="full"``)."""
    vcfg = model.cfg.vision
    assert vcfg is not None
    check_square_pixels(model, pixel_values)
    g = vcfg.grid_size
    keep_cls = int(vcfg.class_token and vcfg.feature_select == "full")
    return [ImageLayout(rows=g, cols=g, n_prefix=keep_cls) for _ in range(pixel_values.shape[0])]


@register_pipeline("vit_mlp", layouts=vit_mlp_layouts)
def vit_mlp(model: "HookedVLM", pixel_values: torch.Tensor, extras: dict) -> tuple[torch.Tensor, list[ImageLayout]]:
    """LLaVA-1.5: one fixed-size square image -> ViT -> selected layers -> MLP projector."""
    layouts = vit_mlp_layouts(model, pixel_values, extras)
    embeds = model.projector(model.vision(pixel_values))  # [image, tokens, d_model]
    return embeds.reshape(-1, embeds.shape[-1]), layouts
