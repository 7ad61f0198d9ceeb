"""Qwen3-VL: packed patches -> ViT (learned + rotary positions) -> patch merger, plus the DeepStack levels.

Returns (image embeddings, layouts, DeepStack features): level ``i`` [n_image_tokens, d_model] is added by
HookedVLM.forward to the image positions after LM block ``i`` (``blocks.{i}.hook_deepstack``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..spans import ImageLayout
from .base import register_pipeline
from .qwen_vl import check_qwen_inputs, qwen_layouts

if TYPE_CHECKING:
    from ..model import HookedVLM


@register_pipeline("qwen3_vl", layouts=qwen_layouts)
def qwen3_vl(model: "HookedVLM", pixel_values: torch.Tensor,
             extras: dict) -> tuple[torch.Tensor, list[ImageLayout], list[torch.Tensor]]:
    layouts = qwen_layouts(model, pixel_values, extras)
    grid = check_qwen_inputs(model, pixel_values, extras)
    last, levels = model.vision(pixel_values, grid.to(pixel_values.device))
    embeds = model.projector(last)
    deepstack = [feat.reshape(-1, feat.shape[-1]) for feat in model.projector.levels(levels)]
    return embeds.reshape(-1, embeds.shape[-1]), layouts, deepstack
