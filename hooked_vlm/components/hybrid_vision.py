"""Two image towers side by side (DeepSeek-VL-Hybrid): a low-resolution post-norm ViT at ``vision.*`` (the SigLIP
tower of :class:`~hooked_vlm.components.vision_post_norm.PostNormVisionTower`, read after ``ln_post``) and a
high-resolution tower at ``vision.high_res.*`` built from ``cfg.extra["high_res"]`` (a :class:`VisionConfig` of its own
kind: SAM's ViT, components/sam_vision.py), fed its own pixels (``high_res_pixel_values``).

``forward`` returns both towers' outputs unmerged; the projector combines them (components/hybrid_aligner.py), so
``vision.ln_post.hook_normalized`` [image, patch, d_low] and ``vision.high_res.neck.hook_out`` [image, patch_hi, d_neck]
are the two towers' features before anything mixes them.
"""

from __future__ import annotations

import torch

from ..config import VisionConfig
from .vision_post_norm import PostNormVisionTower


class HybridVisionTower(PostNormVisionTower):
    def __init__(self, cfg: VisionConfig):
        super().__init__(cfg)
        from . import build_vision

        high = cfg.extra.get("high_res")
        if not isinstance(high, VisionConfig):
            raise ValueError("a hybrid vision tower needs cfg.extra['high_res']: the VisionConfig of its high-resolution "
                             f"tower; got {type(high).__name__}")
        self.high_res = build_vision(high)

    def forward(self, pixel_values: torch.Tensor, high_res_pixel_values: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """-> (low-res features [image, patch, d_low], the high-res tower's output and its selected hidden states)."""
        low = super().forward(pixel_values)
        high, high_layers = self.high_res(high_res_pixel_values)
        return low, high, high_layers
