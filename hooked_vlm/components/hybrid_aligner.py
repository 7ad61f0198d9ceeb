"""DeepSeek-VL-Hybrid's combination of a low-resolution and a high-resolution tower (HF's ``high_res_vision_neck``,
``high_res_vision_proj``, ``high_res_vision_alpha`` and ``aligner``), as one projector:

    down(x)  = conv2(conv1(bilinear(x, 4 * out_grid)))      two 3x3 stride-2 convs, d_neck -> 2 d_neck -> 4 d_neck
    high     = down(high_res_in) + down(high_res_neck(high_res_global)) * high_res_alpha        [image, out_grid^2, 4 d_neck]
    out      = proj(gelu(cat[high_res_vision_proj(high), vision_proj(low)]))                    [image, out_grid^2, d_model]

``low`` is the low-resolution tower's output (``hook_in``), ``high_res_in`` the high-resolution tower's neck output
and ``high_res_global`` its hidden state after the first global-attention layer (both on the high-res grid).
``extra``: d_high (the high-res tower's width), d_neck (its neck's channels), high_grid (its patch grid side),
out_grid (the low-res patch grid side: the number of image tokens per side).

Hooks: ``hook_in`` [image, n, d_in]; ``hook_high_res_in`` [image, high_grid^2, d_neck]; ``hook_high_res_global``
[image, high_grid^2, d_high]; ``high_res_neck.*``; ``hook_high_res`` [image, n, 4 d_neck] (the merged high-res
features); ``hook_low_res_proj`` / ``hook_high_res_proj`` [image, n, d_model / 2] (the two halves before they are
concatenated); ``hook_out`` [image, n, d_model].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from transformers.activations import ACT2FN

from ..config import ProjectorConfig
from ..hook_points import HookPoint
from .conv_neck import ConvNeck


class HybridAligner(nn.Module):
    def __init__(self, cfg: ProjectorConfig):
        super().__init__()
        x = cfg.extra
        if cfg.d_out % 2:
            raise ValueError(f"the hybrid aligner splits d_model={cfg.d_out} into two halves: it must be even")
        c = x["d_neck"]
        self.high_grid, self.out_grid = x["high_grid"], x["out_grid"]
        self.high_res_neck = ConvNeck(x["d_high"], c)
        self.high_res_conv1 = nn.Conv2d(c, 2 * c, kernel_size=3, stride=2, padding=1, bias=False)
        self.high_res_conv2 = nn.Conv2d(2 * c, 4 * c, kernel_size=3, stride=2, padding=1, bias=False)
        self.high_res_alpha = nn.Parameter(torch.zeros(1))
        self.vision_proj = nn.Linear(cfg.d_in, cfg.d_out // 2, bias=cfg.bias)
        self.high_res_vision_proj = nn.Linear(4 * c, cfg.d_out // 2, bias=cfg.bias)
        self.act = ACT2FN[cfg.act_fn]
        self.proj = nn.Linear(cfg.d_out, cfg.d_out, bias=cfg.bias)
        self.hook_in = HookPoint()  # [image, n, d_in]
        self.hook_high_res_in = HookPoint()  # [image, high_patch, d_neck]
        self.hook_high_res_global = HookPoint()  # [image, high_patch, d_high]
        self.hook_high_res = HookPoint()  # [image, n, 4 * d_neck]
        self.hook_low_res_proj = HookPoint()  # [image, n, d_model / 2]
        self.hook_high_res_proj = HookPoint()  # [image, n, d_model / 2]
        self.hook_out = HookPoint()  # [image, n, d_model]

    def _down(self, x: torch.Tensor) -> torch.Tensor:
        """[image, high_grid^2, d_neck] -> [image, out_grid^2, 4 d_neck]."""
        grid = rearrange(x, "b (h w) c -> b c h w", h=self.high_grid)
        grid = F.interpolate(grid, size=(4 * self.out_grid, 4 * self.out_grid), mode="bilinear", align_corners=False)
        return rearrange(self.high_res_conv2(self.high_res_conv1(grid)), "b c h w -> b (h w) c")

    def forward(self, low: torch.Tensor, high_res: torch.Tensor, high_res_global: torch.Tensor) -> torch.Tensor:
        low = self.hook_in(low)
        high_res = self.hook_high_res_in(high_res)
        glob = self.high_res_neck(self.hook_high_res_global(high_res_global), self.high_grid)
        high = self.hook_high_res(self._down(high_res) + self._down(glob) * self.high_res_alpha)
        merged = torch.cat([self.hook_high_res_proj(self.high_res_vision_proj(high)),
                            self.hook_low_res_proj(self.vision_proj(low))], dim=-1)
        return self.hook_out(self.proj(self.act(merged)))
