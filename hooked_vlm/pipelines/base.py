"""The pipeline registry (see the package docstring)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

from ..spans import ImageLayout

if TYPE_CHECKING:
    from ..model import HookedVLM

ImagePipeline = Callable[["HookedVLM", torch.Tensor, dict], tuple[torch.Tensor, list[ImageLayout]]]
LayoutFn = Callable[["HookedVLM", torch.Tensor, dict], list[ImageLayout]]
PIPELINES: dict[str, ImagePipeline] = {}
#: pipeline name -> its layouts from the inputs alone (shapes, image sizes, grids, marker tokens), without running the
#: vision tower: the forward builds the spans from them BEFORE encoding, so hooks in the vision tower, the projector
#: and ``hook_image_embeds`` see this forward's ``hook.spans``; the model checks the pipeline returns the same layouts
LAYOUTS: dict[str, LayoutFn] = {}


def register_pipeline(name: str, layouts: LayoutFn) -> Callable[[ImagePipeline], ImagePipeline]:
    """Register ``fn(model, pixel_values, extras) -> (image embeddings, layouts[, more])`` and its ``layouts`` function
    (same arguments, cheap: it must not run the tower; it validates the inputs as the pipeline would)."""
    def deco(fn: ImagePipeline) -> ImagePipeline:
        PIPELINES[name] = fn
        LAYOUTS[name] = layouts
        return fn

    return deco


def check_square_pixels(model: "HookedVLM", pixel_values: torch.Tensor) -> None:
    """Fixed-size towers (CLIP / SigLIP): pixel_values must be [n_images, channels, image_size, image_size]."""
    vcfg = model.cfg.vision
    expected = (vcfg.n_channels, vcfg.image_size, vcfg.image_size)
    if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != expected:
        raise ValueError(
            f"pixel_values has shape {tuple(pixel_values.shape)}; this model's vision tower expects "
            f"[n_images, {', '.join(map(str, expected))}]. Use model.prepare_inputs(images=..., text=...) "
            "or the checkpoint's own processor to make pixel_values."
        )
