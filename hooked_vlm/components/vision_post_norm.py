"""A ViT whose output features pass through a final norm (SigLIP-style ``post_layernorm``; Janus).

Same tower as :class:`~hooked_vlm.components.vision.VisionTower` (no class token / learned
positions / no ln_pre are config fields); the selected features (the last block's output) go
through ``vision.ln_post`` before the projector: read them at ``vision.ln_post.hook_normalized``.
"""

from __future__ import annotations

import torch

from ..config import VisionConfig
from .norms import make_norm
from .vision import VisionTower


class PostNormVisionTower(VisionTower):
    def __init__(self, cfg: VisionConfig):
        super().__init__(cfg)
        if tuple(cfg.feature_layers) != (-1,):
            raise ValueError(f"a post-norm vision tower feeds its last layer only; got feature_layers={cfg.feature_layers}")
        t = cfg.tower
        self.ln_post = make_norm(t.normalization_type, t.d_model, t.norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [image, channel, height, width] -> normed last-layer features [image, pos, d]."""
        return self.ln_post(super().forward(pixel_values))
