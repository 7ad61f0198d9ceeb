"""GOT-OCR2's projector: two 3x3 stride-2 convs (padding 1, no bias; d_in -> 2 d_in -> d_out) over the tower's
feature grid, then a Linear (HF's ``conv_upsampler1`` / ``conv_upsampler2`` / ``multimodal_projector``): a g x g grid
becomes ceil(ceil(g / 2) / 2) per side (SAM's 64 x 64 -> 16 x 16 = 256 tokens per 1024 px image).

``extra``: grid (the tower's patch grid side). Hooks: ``hook_in`` [image, grid^2, d_in]; ``hook_downsampled``
[image, n, d_out] (after the convs, row-major); ``hook_out`` [image, n, d_out].
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from ..config import ProjectorConfig
from ..hook_points import HookPoint


def downsampled_side(grid: int) -> int:
    """Side of the grid after two 3x3 stride-2 convs with padding 1."""
    return ((grid + 1) // 2 + 1) // 2


class ConvDownsampleProjector(nn.Module):
    def __init__(self, cfg: ProjectorConfig):
        super().__init__()
        self.grid = cfg.extra["grid"]
        self.conv1 = nn.Conv2d(cfg.d_in, 2 * cfg.d_in, kernel_size=3, stride=2, padding=1, bias=False)
        self.conv2 = nn.Conv2d(2 * cfg.d_in, cfg.d_out, kernel_size=3, stride=2, padding=1, bias=False)
        self.linear = nn.Linear(cfg.d_out, cfg.d_out, bias=cfg.bias)
        self.hook_in = HookPoint()  # [image, grid^2, d_in]
        self.hook_downsampled = HookPoint()  # [image, n_tokens, d_model]
        self.hook_out = HookPoint()  # [image, n_tokens, d_model]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = rearrange(self.hook_in(features), "b (h w) c -> b c h w", h=self.grid)
        down = self.hook_downsampled(rearrange(self.conv2(self.conv1(x)), "b c h w -> b (h w) c"))
        return self.hook_out(self.linear(down))
