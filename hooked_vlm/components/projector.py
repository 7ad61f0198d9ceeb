"""The two-layer MLP projector of LLaVA-style models (vision features -> LM residual stream).

``extra["pre_norm_eps"]`` (default None): a LayerNorm ``ln`` of the features first, with that eps (VipLlava)."""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN

from ..config import ProjectorConfig
from ..hook_points import HookPoint
from .norms import LayerNorm


class MLPProjector(nn.Module):
    def __init__(self, cfg: ProjectorConfig):
        super().__init__()
        eps = cfg.extra.get("pre_norm_eps")
        self.ln = None if eps is None else LayerNorm(cfg.d_in, eps)
        self.linear_1 = nn.Linear(cfg.d_in, cfg.d_out, bias=cfg.bias)
        self.act = ACT2FN[cfg.act_fn]
        self.linear_2 = nn.Linear(cfg.d_out, cfg.d_out, bias=cfg.bias)
        self.hook_in = HookPoint()  # [image, pos, d_in]
        self.hook_out = HookPoint()  # [image, pos, d_model]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.hook_in(features)
        if self.ln is not None:
            x = self.ln(x)
        return self.hook_out(self.linear_2(self.act(self.linear_1(x))))
