"""SAM's conv neck: a 1x1 conv (d_in -> d_out), a LayerNorm over channels, a 3x3 conv (padding 1), a LayerNorm; both
convs without bias, both norms per position over the channels (HF's channels_first ``SamLayerNorm``, eps 1e-6).

Used at the end of the SAM ViT (``vision.neck``) and by DeepSeek-VL-Hybrid's aligner on the global layer's state
(``projector.high_res_neck``). Positions stay row-major [image, side * side, channels] at every hook.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from ..hook_points import HookPoint
from .norms import LayerNorm


class ConvNeck(nn.Module):
    def __init__(self, d_in: int, d_out: int, eps: float = 1e-6):
        super().__init__()
        self.conv1 = nn.Conv2d(d_in, d_out, kernel_size=1, bias=False)
        self.ln1 = LayerNorm(d_out, eps)
        self.conv2 = nn.Conv2d(d_out, d_out, kernel_size=3, padding=1, bias=False)
        self.ln2 = LayerNorm(d_out, eps)
        self.hook_in = HookPoint()  # [image, pos, d_in]
        self.hook_out = HookPoint()  # [image, pos, d_out]

    def forward(self, x: torch.Tensor, side: int) -> torch.Tensor:
        """x [image, side * side, d_in] (row-major patches) -> [image, side * side, d_out]."""
        x = self.hook_in(x)
        h = self.conv1(rearrange(x, "b (h w) d -> b d h w", h=side))
        h = self.ln1(rearrange(h, "b d h w -> b (h w) d"))
        h = self.conv2(rearrange(h, "b (h w) d -> b d h w", h=side))
        return self.hook_out(self.ln2(rearrange(h, "b d h w -> b (h w) d")))
