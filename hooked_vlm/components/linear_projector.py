"""A single linear layer from vision features to the LM residual stream (PaliGemma's multi_modal_projector)."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ProjectorConfig
from ..hook_points import HookPoint


class LinearProjector(nn.Module):
    def __init__(self, cfg: ProjectorConfig):
        super().__init__()
        self.linear = nn.Linear(cfg.d_in, cfg.d_out, bias=cfg.bias)
        self.hook_in = HookPoint()  # [image, pos, d_in]
        self.hook_out = HookPoint()  # [image, pos, d_model]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.hook_out(self.linear(self.hook_in(features)))
