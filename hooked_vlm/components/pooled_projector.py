"""Average-pool the patch grid, RMS-normalise, project with one matrix (Gemma 3's multi-modal projector).

``cfg.extra``: ``patches_per_side`` (the ViT grid), ``tokens_per_side`` (the pooled grid; Gemma 3: 64 -> 16 with a
4x4 kernel), ``norm_eps``, ``norm_offset`` (Gemma: 1.0, the ``(1 + w)`` RMSNorm). ``weight`` is HF's raw
``mm_input_projection_weight`` [d_in, d_out] (a matmul, not a Linear). Hooks: ``projector.hook_in`` (the ViT
features [image, patch, d_in]), ``projector.hook_pooled`` [image, token, d_in] (row-major pooled grid, before the
norm), ``projector.norm.*``, ``projector.hook_out`` [image, token, d_out].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..config import ProjectorConfig
from ..hook_points import HookPoint
from .norms import RMSNorm


class PooledNormProjector(nn.Module):
    def __init__(self, cfg: ProjectorConfig):
        super().__init__()
        extra = cfg.extra
        self.patches_per_side, self.tokens_per_side = int(extra["patches_per_side"]), int(extra["tokens_per_side"])
        if self.patches_per_side % self.tokens_per_side:
            raise ValueError(f"a {self.patches_per_side}x{self.patches_per_side} patch grid cannot be average-pooled "
                             f"to {self.tokens_per_side}x{self.tokens_per_side} tokens")
        self.kernel = self.patches_per_side // self.tokens_per_side
        self.norm = RMSNorm(cfg.d_in, float(extra["norm_eps"]), float(extra.get("norm_offset", 0.0)))
        self.weight = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_out))  # [d_in, d_out]
        self.hook_in = HookPoint()  # [image, patch, d_in]
        self.hook_pooled = HookPoint()  # [image, token, d_in]
        self.hook_out = HookPoint()  # [image, token, d_out]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.hook_in(features)
        p = self.patches_per_side
        if x.shape[1] != p * p:
            raise ValueError(f"the projector expects {p * p} patches per image ({p}x{p}); got {x.shape[1]}")
        grid = rearrange(x, "image (row col) d -> image d row col", row=p)
        pooled = F.avg_pool2d(grid, kernel_size=self.kernel, stride=self.kernel)
        pooled = self.hook_pooled(rearrange(pooled, "image d row col -> image (row col) d"))
        out = torch.matmul(self.norm(pooled), self.weight)
        return self.hook_out(out.type_as(features))
