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
