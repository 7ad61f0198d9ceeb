"""Pixel-shuffle connectors: scale x scale patches -> one token, then a linear map or a normed two-layer MLP.

``extra["scale_factor"]``: patches folded per side. A square grid of ``side x side`` patches becomes ``side / scale``
squared tokens, row-major, each the concatenation of a ``scale x scale`` block (HF's exact order: Idefics3's
connector and InternVL's ``pixel_shuffle`` with ``downsample_ratio = 1 / scale`` give the same layout).
``extra["mlp"]`` (default False): False = one linear map ``proj`` (Idefics3 / SmolVLM); True = ``ln`` (a LayerNorm of
the shuffled features, eps ``extra["norm_eps"]``) -> ``linear_1`` -> activation -> ``linear_2`` (InternVL).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN

from ..config import ProjectorConfig
from ..hook_points import HookPoint
from .norms import LayerNorm


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
        d_shuffled = cfg.d_in * self.scale**2
        self.mlp = bool(cfg.extra.get("mlp", False))
        if self.mlp:
            self.ln = LayerNorm(d_shuffled, cfg.extra.get("norm_eps", 1e-5))
            self.linear_1 = nn.Linear(d_shuffled, cfg.d_out, bias=cfg.bias)
            self.act = ACT2FN[cfg.act_fn]
            self.linear_2 = nn.Linear(cfg.d_out, cfg.d_out, bias=cfg.bias)
        else:
            self.proj = nn.Linear(d_shuffled, cfg.d_out, bias=cfg.bias)
        self.hook_in = HookPoint()  # [image, patch, d_vision]
        self.hook_out = HookPoint()  # [image, image_token, d_model]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = pixel_shuffle(self.hook_in(features), self.scale)  # [image, image_token, d_vision * scale**2]
        if self.mlp:
            return self.hook_out(self.linear_2(self.act(self.linear_1(self.ln(x)))))
        return self.hook_out(self.proj(x))
