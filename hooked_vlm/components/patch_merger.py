"""Qwen2-VL's patch merger: norm, concatenate each merge x merge block of patches, two-layer MLP.

``extra``: spatial_merge_size, norm ("LN" Qwen2-VL | "RMS" Qwen2.5-VL), norm_eps, postshuffle_norm (False: the
norm runs over each patch before concatenating; True: over the concatenated merge**2 patches, as Qwen3-VL's
DeepStack mergers). The patches
arrive merge-block-major (the processor's order), so each block is ``merge**2`` consecutive rows.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN

from ..config import ProjectorConfig
from ..hook_points import HookPoint
from .norms import make_norm


class PatchMerger(nn.Module):
    def __init__(self, cfg: ProjectorConfig):
        super().__init__()
        self.merge = cfg.extra["spatial_merge_size"]
        d_cat = cfg.d_in * self.merge**2
        self.postshuffle_norm = bool(cfg.extra.get("postshuffle_norm", False))
        self.ln_q = make_norm(cfg.extra.get("norm", "LN"), d_cat if self.postshuffle_norm else cfg.d_in,
                              cfg.extra.get("norm_eps", 1e-6))
        self.linear_1 = nn.Linear(d_cat, d_cat, bias=cfg.bias)
        self.act = ACT2FN[cfg.act_fn]
        self.linear_2 = nn.Linear(d_cat, cfg.d_out, bias=cfg.bias)
        self.hook_in = HookPoint()  # [1, n_patches, d_vision]
        self.hook_out = HookPoint()  # [1, n_image_tokens, d_model]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.hook_in(features)
        if self.postshuffle_norm:
            x = self.ln_q(x.reshape(x.shape[0], -1, x.shape[-1] * self.merge**2))
        else:
            x = self.ln_q(x)
            x = x.reshape(x.shape[0], -1, x.shape[-1] * self.merge**2)
        return self.hook_out(self.linear_2(self.act(self.linear_1(x))))
