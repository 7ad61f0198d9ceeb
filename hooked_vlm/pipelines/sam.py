"""Pipelines fed by SAM's ViT (components/sam_vision.py).

``sam_conv`` (GOT-OCR2): one fixed-size square image (a page, or one tile of ``crop_to_patches``) per row of
``pixel_values`` -> SAM ViT -> neck -> the conv-downsample projector: a g x g grid of tokens per image (g =
ceil(ceil(grid / 2) / 2): 16 x 16 at 1024 px), between the ``<img>`` / ``</img>`` markers (``boi`` / ``eoi``) of
GotOcr2Processor, which writes ``<imgpad>`` x 256 per tile.

``hybrid_vit``: two towers on two resolutions of each image (DeepSeek-VL-Hybrid): ``pixel_values`` for the low-res tower and
``high_res_pixel_values`` for the high-res one (the processor makes both from every image), combined by the projector
into one token per low-res patch: a g x g grid per image, no markers (DeepseekVLHybridProcessor repeats the image
token ``num_image_tokens`` times)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..spans import ImageLayout
from ..components.conv_projector import downsampled_side
from .base import check_square_pixels, register_pipeline

if TYPE_CHECKING:
    from ..model import HookedVLM


def _high_res(model: "HookedVLM", pixel_values: torch.Tensor, extras: dict) -> torch.Tensor:
    high = extras.get("high_res_pixel_values")
    hcfg = model.cfg.vision.extra["high_res"]
    expected = (pixel_values.shape[0], hcfg.n_channels, hcfg.image_size, hcfg.image_size)
    if high is None or tuple(high.shape) != expected:
        got = "none" if high is None else f"shape {tuple(high.shape)}"
        raise ValueError(f"this model encodes every image twice: pass high_res_pixel_values {list(expected)} (one per "
                         f"image of pixel_values) beside pixel_values; got {got}. The checkpoint's processor "
                         "(DeepseekVLHybridProcessor) makes both")
    return high


def hybrid_layouts(model: "HookedVLM", pixel_values: torch.Tensor, extras: dict) -> list[ImageLayout]:
    check_square_pixels(model, pixel_values)
    _high_res(model, pixel_values, extras)
    g = model.cfg.vision.grid_size
    return [ImageLayout(rows=g, cols=g) for _ in range(pixel_values.shape[0])]


@register_pipeline("hybrid_vit", layouts=hybrid_layouts)
def hybrid_vit(model: "HookedVLM", pixel_values: torch.Tensor, extras: dict) -> tuple[torch.Tensor, list[ImageLayout]]:
    layouts = hybrid_layouts(model, pixel_values, extras)
    high = _high_res(model, pixel_values, extras).to(pixel_values.device)
    low, high_out, (high_global,) = model.vision(pixel_values, high)
    embeds = model.projector(low, high_out, high_global)  # [image, tokens, d_model]
    return embeds.reshape(-1, embeds.shape[-1]), layouts


def sam_conv_layouts(model: "HookedVLM", pixel_values: torch.Tensor, extras: dict) -> list[ImageLayout]:
    check_square_pixels(model, pixel_values)
    g = downsampled_side(model.cfg.vision.grid_size)
    return [ImageLayout(rows=g, cols=g) for _ in range(pixel_values.shape[0])]


@register_pipeline("sam_conv", layouts=sam_conv_layouts)
def sam_conv(model: "HookedVLM", pixel_values: torch.Tensor, extras: dict) -> tuple[torch.Tensor, list[ImageLayout]]:
    layouts = sam_conv_layouts(model, pixel_values, extras)
    neck, _ = model.vision(pixel_values)
    embeds = model.projector(neck)  # [image, tokens, d_model]
    return embeds.reshape(-1, embeds.shape[-1]), layouts
