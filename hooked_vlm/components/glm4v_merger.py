"""GLM-4.xV's projector: a strided conv over each merge x merge block of patches, then HF's ``Glm4vVisionPatchMerger``:
``proj -> LayerNorm -> GELU -> gated MLP`` (``down(act(gate(x)) * up(x))``).

The patches arrive merge-block-major (the processor's order), so each block is ``merge**2`` consecutive rows, read
as a ``merge x merge`` image by the ``downsample`` Conv2d (kernel = stride = merge, d_in -> d_out).
``extra``: spatial_merge_size, d_context (the gated MLP's hidden width, HF's ``vision_config.intermediate_size``),
mlp_act (its activation, HF's ``vision_config.hidden_act``), norm_eps (the LayerNorm's, 1e-5 in HF).
Hooks: ``hook_in`` [1, n_patches, d_in], ``hook_downsampled`` [1, n_tokens, d_out] (after the conv),
``mlp.hook_pre`` / ``mlp.hook_post`` [1, n_tokens, d_context], ``hook_out`` [1, n_tokens, d_out].
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from ..config import ProjectorConfig
from ..hook_points import HookPoint
from .mlp import MLP
from .norms import make_norm


class Glm4vMerger(nn.Module):
    def __init__(self, cfg: ProjectorConfig):
        super().__init__()
        x = cfg.extra
        self.merge = x["spatial_merge_size"]
        self.downsample = nn.Conv2d(cfg.d_in, cfg.d_out, kernel_size=self.merge, stride=self.merge)
        self.proj = nn.Linear(cfg.d_out, cfg.d_out, bias=cfg.bias)
        self.ln = make_norm("LN", cfg.d_out, x.get("norm_eps", 1e-5))
        self.act = nn.GELU()
        self.mlp = MLP(cfg.d_out, x["d_context"], x["mlp_act"], gated=True, bias=cfg.bias)
        self.hook_in = HookPoint()  # [1, n_patches, d_vision]
        self.hook_downsampled = HookPoint()  # [1, n_image_tokens, d_model]
        self.hook_out = HookPoint()  # [1, n_image_tokens, d_model]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.hook_in(features)
        batch = x.shape[0]
        blocks = rearrange(x, "b (n m1 m2) d -> (b n) d m1 m2", m1=self.merge, m2=self.merge)
        down = rearrange(self.downsample(blocks), "(b n) d 1 1 -> b n d", b=batch)
        down = self.hook_downsampled(down)
        return self.hook_out(self.mlp(self.act(self.ln(self.proj(down)))))
