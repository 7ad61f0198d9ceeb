"""Idefics2: (sub-)images -> NaViT SigLIP tower -> gated MLP + perceiver resampler -> a fixed number of latents each.

``pixel_values`` [batch, max_images, C, H, W] (all-zero entries are batch padding, dropped as HF does),
``pixel_attention_mask`` [batch, max_images, H, W]; a patch is real when ALL its pixels are (HF Idefics2's rule), and
the remainder of a size that is no multiple of the patch is dropped as HF's conv drops it. Every (sub-)image gives
``n_latents`` LM tokens: latents, not patches, so their layout has no grid (``ImageLayout.latents``; spans
``latent``; ``spans.to_grid`` refuses them).

Image splitting (the processor's ``do_image_splitting``): every image arrives as ``cfg.extra["sub_images_per_image"]``
= 5 sub-images, the four quarters (top-left, top-right, bottom-left, bottom-right) and the whole image; they are one
``image.{i}`` with 5 tiles (tile 0-3 the quarters, tile 4 the whole image). The loader sets it from the checkpoint's
processor (1 without one: then every sub-image is an image of its own).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..spans import ImageLayout
from .base import register_pipeline
from .idefics3 import real_tiles

if TYPE_CHECKING:
    from ..model import HookedVLM


def resampled_layouts(model: "HookedVLM", pixel_values: torch.Tensor, extras: dict) -> list[ImageLayout]:
    """Per image, ``sub_images_per_image`` tiles of ``n_latents`` latents each."""
    _, _, real_per_item = real_tiles(model, pixel_values, extras, partial_patches="all")
    n_latents = int(model.cfg.projector.extra["n_latents"])
    per_image = int(model.cfg.extra.get("sub_images_per_image", 1))
    layouts: list[ImageLayout] = []
    for b, n in enumerate(real_per_item):
        if n % per_image:
            raise ValueError(f"batch item {b} holds {n} (sub-)images, not a multiple of {per_image}: with image "
                             f"splitting every image is {per_image} sub-images (4 quarters + the whole image). Build "
                             "the inputs with the model's processor, or set model.cfg.extra['sub_images_per_image'] "
                             "to 1 if the processor ran with do_image_splitting=False")
        layouts += [ImageLayout(rows=0, cols=0, tiles=per_image, latents=n_latents) for _ in range(n // per_image)]
    return layouts


@register_pipeline("navit_resampler", layouts=resampled_layouts)
def navit_resampler(model: "HookedVLM", pixel_values: torch.Tensor, extras: dict) -> tuple[torch.Tensor, list[ImageLayout]]:
    layouts = resampled_layouts(model, pixel_values, extras)
    flat, patch_mask, _ = real_tiles(model, pixel_values, extras, partial_patches="all")
    features = model.vision(flat, patch_mask)  # [sub_image, patch, d_vision]
    embeds = model.projector(features, patch_mask.flatten(1))  # [sub_image, latent, d_model]
    return embeds.reshape(-1, embeds.shape[-1]), layouts
