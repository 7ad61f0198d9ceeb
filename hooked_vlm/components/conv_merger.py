"""A convolutional patch merger with row-break and boundary embeddings (HunYuanVL's ``HunYuanVLVisionPatchMerger``,
projector kind ``conv_merger``).

Per image (its patches row-major, an ``h x w`` grid): RMSNorm (``ln_in``) -> a merge x merge strided Conv2d
(``proj_conv``, d -> 2d) -> activation -> 1 x 1 Conv2d (``proj_out``, 2d -> 4d) -> a learned ``image_newline`` [4d]
appended after every row of merged cells -> Linear (``mlp``, 4d -> d_model) -> learned ``image_begin`` before and
``image_end`` after -> RMSNorm (``ln_out``). One image gives ``1 + (h / m) * (w / m + 1) + 1`` LM tokens.
Hooks (all images concatenated in order): ``hook_in`` [1, n_patches, d_vision], ``hook_downsampled`` [1, n_cells,
4 d_vision] (after proj_out, before the newlines), ``hook_out`` [1, n_image_tokens, d_model].
``extra``: spatial_merge_size, norm_eps, act (the conv activation).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn
from transformers.activations import ACT2FN

from ..config import ProjectorConfig
from ..hook_points import HookPoint
from .norms import make_norm


class ConvMerger(nn.Module):
    def __init__(self, cfg: ProjectorConfig):
        super().__init__()
        x = cfg.extra
        d, self.merge = cfg.d_in, x["spatial_merge_size"]
        self.ln_in = make_norm("RMS", d, x["norm_eps"])
        self.proj_conv = nn.Conv2d(d, 2 * d, kernel_size=self.merge, stride=self.merge, bias=cfg.bias)
        self.act = ACT2FN[x["act"]]
        self.proj_out = nn.Conv2d(2 * d, 4 * d, kernel_size=1, bias=cfg.bias)
        self.image_newline = nn.Parameter(torch.zeros(4 * d))
        self.mlp = nn.Linear(4 * d, cfg.d_out, bias=cfg.bias)
        self.image_begin = nn.Parameter(torch.zeros(cfg.d_out))
        self.image_end = nn.Parameter(torch.zeros(cfg.d_out))
        self.ln_out = make_norm("RMS", cfg.d_out, x["norm_eps"])
        self.hook_in = HookPoint()  # [1, n_patches, d_vision]
        self.hook_downsampled = HookPoint()  # [1, n_cells, 4 * d_vision]
        self.hook_out = HookPoint()  # [1, n_image_tokens, d_model]

    def forward(self, features: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """features [1, n_patches, d_vision], grid_thw [n_images, 3] -> [1, n_image_tokens, d_model]."""
        x = self.ln_in(self.hook_in(features))
        grids = [(int(h), int(w)) for _, h, w in grid_thw.tolist()]
        sizes = [int(t) * h * w for (t, _, _), (h, w) in zip(grid_thw.tolist(), grids)]
        if sum(sizes) != x.shape[1] or any(t != 1 for t, _, _ in grid_thw.tolist()):
            raise ValueError(f"the merger takes single-frame images (t = 1) whose h * w patches sum to the features' "
                             f"{x.shape[1]}; got image_grid_thw {grid_thw.tolist()}")
        cells = []
        for item, (h, w) in zip(x[0].split(sizes), grids):
            image = rearrange(item, "(h w) d -> 1 d h w", h=h)
            out = self.proj_out(self.act(self.proj_conv(image)))
            cells.append(rearrange(out, "1 d h w -> (h w) d"))
        shapes = [(h // self.merge, w // self.merge) for h, w in grids]
        down = self.hook_downsampled(torch.cat(cells)[None])[0]
        tokens = []
        for item, (h, w) in zip(down.split([h * w for h, w in shapes]), shapes):
            rows = rearrange(item, "(h w) d -> h w d", h=h)
            newline = self.image_newline.to(rows.dtype).expand(h, 1, -1)
            merged = self.mlp(rearrange(torch.cat([rows, newline], dim=1), "h w d -> (h w) d"))
            tokens += [self.image_begin.to(merged.dtype)[None], merged, self.image_end.to(merged.dtype)[None]]
        return self.hook_out(self.ln_out(torch.cat(tokens)[None]))
