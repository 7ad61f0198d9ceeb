"""The pipeline registry (see the package docstring)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch

from ..spans import ImageLayout

if TYPE_CHECKING:
    from ..model import HookedVLM

ImagePipeline = Callable[["HookedVLM", torch.Tensor, dict], tuple[torch.Tensor, list[ImageLayout]]]
PIPELINES: dict[str, ImagePipeline] = {}


def register_pipeline(name: str) -> Callable[[ImagePipeline], ImagePipeline]:
    def deco(fn: ImagePipeline) -> ImagePipeline:
        PIPELINES[name] = fn
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
