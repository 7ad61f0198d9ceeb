"""Mistral3's projector: RMSNorm -> learned merge of each s x s patch block -> two-layer MLP.

Works per image on its own patch grid (images differ in size), so ``forward`` takes the grids.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from transformers.activations import ACT2FN

from ..config import ProjectorConfig
from ..hook_points import HookPoint
from .norms import RMSNorm


class PatchMergerProjector(nn.Module):
    needs_grids = True  # the image pipeline passes the patch grid of every image

    def __init__(self, cfg: ProjectorConfig):
        super().__init__()
        self.merge = int(cfg.extra["spatial_merge_size"])
        self.norm = RMSNorm(cfg.d_in, float(cfg.extra["norm_eps"]))
        self.merging_layer = nn.Linear(cfg.d_in * self.merge**2, cfg.d_in, bias=False)
        self.linear_1 = nn.Linear(cfg.d_in, cfg.d_out, bias=cfg.bias)
        self.act = ACT2FN[cfg.act_fn]
        self.linear_2 = nn.Linear(cfg.d_out, cfg.d_out, bias=cfg.bias)
        self.hook_in = HookPoint()  # [1, patch, d_in] (all images' patches, packed)
        self.hook_merged = HookPoint()  # [merged_patch, d_in] (after the merging layer)
        self.hook_out = HookPoint()  # [merged_patch, d_model]

    def forward(self, features: Float[Tensor, "1 patch d_in"], grids: list[tuple[int, int]]) -> Float[Tensor, "merged d_model"]:
        """features [1, patches, d_in] (images packed in order); grids: (rows, cols) of patches per image."""
        x = self.norm(self.hook_in(features))[0]
        d, s = x.shape[-1], self.merge
        merged = []
        for tokens, (h, w) in zip(x.split([h * w for h, w in grids]), grids):
            grid = tokens.view(h, w, d).permute(2, 0, 1).unsqueeze(0)  # [1, d, h, w]
            cells = F.unfold(grid, kernel_size=s, stride=s)  # [1, d*s*s, (h//s)*(w//s)], channel-major
            merged.append(cells.view(d * s * s, -1).t())
        x = self.hook_merged(self.merging_layer(torch.cat(merged, 0)))
        return self.hook_out(self.linear_2(self.act(self.linear_1(x))))
