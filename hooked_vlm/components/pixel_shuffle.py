"""Idefics3 / SmolVLM connector: pixel shuffle (scale x scale patches -> one token) + one linear map.

``extra["scale_factor"]``. A square grid of ``side x side`` patches becomes ``side / scale``
squared tokens, row-major, each the concatenation of a ``scale x scale`` block (HF's exact order).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ProjectorConfig
from ..hook_points import HookPoint


def pixel_shuffle(x: torch.Tensor, scale: int) -> torch.Tensor:
    """[image, side * side, d] -> [image, (side / scale)**2, d * scale**2] (HF Idefics3Connector.pixel_shuffle)."""
    n, seq, d = x.shape
    side = int(seq**0.5)
    if side * side != seq or side % scale:
        raise ValueError(f"pixel shuffle needs a square patch grid divisible by {scale}; got {seq} patches")
    x = x.reshape(n, side, side // scale, d * scale)
    x = x.permute(0, 2, 1, 3).reshape(n, side // scale, side // scale, d * scale**2)
    return x.permute(0, 2, 1, 3).reshape(n, seq // scale**2, d * scale**2)


class PixelShuffleProjector(nn.Module):
    def __init__(self, cfg: ProjectorConfig):
        super().__init__()
        self.scale = cfg.extra["scale_factor"]
        self.proj = nn.Linear(cfg.d_in * self.scale**2, cfg.d_out, bias=cfg.bias)
        self.hook_in = HookPoint()  # [image, patch, d_vision]
        self.hook_out = HookPoint()  # [image, image_token, d_model]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.hook_out(self.proj(pixel_shuffle(self.hook_in(features), self.scale)))
