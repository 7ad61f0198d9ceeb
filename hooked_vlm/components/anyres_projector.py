"""The LLaVA-NeXT / OneVision projector: the two-layer MLP plus the learned ``image_newline`` embedding.

``image_newline`` [d_model] is written into the placeholder that closes every row of the high-resolution
grid (see ``hooked_vlm.pipelines.anyres``); spans give those positions the role ``row_break``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ProjectorConfig
from .projector import MLPProjector


class AnyresProjector(MLPProjector):
    def __init__(self, cfg: ProjectorConfig):
        super().__init__(cfg)
        self.image_newline = nn.Parameter(torch.zeros(cfg.d_out))  # [d_model]
