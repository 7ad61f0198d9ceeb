"""The GLM-4.1V / 4.5V / 4.6V ViT: the Qwen2-VL packed-patch tower (Conv3d patch embed, fused qkv, 2-D axial rotary,
attention within each image) with RMS norms and a gated MLP, plus

- a norm right after the patch embedding (``ln_conv``, HF's ``post_conv_layernorm``);
- a learned square position table (``image_size / patch_size`` per side) sampled at every patch's centre by bicubic
  interpolation (``F.grid_sample``, ``align_corners=False``, border padding: HF's ``Glm4vVisionEmbeddings``), added
  after that norm;
- a final norm after the blocks (``ln_post``, HF's ``post_layernorm``), whose output is what the projector reads.

Hooks: ``hook_pos_embed`` [1, n_patches, d] is what is added; ``hook_embed`` the sum (the input of block 0).
Settings in ``VisionConfig.extra``: those of :class:`QwenVisionTower` plus ``num_position_embeddings``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..config import VisionConfig
from ..hook_points import HookPoint
from .masks import AttentionMask
from .norms import make_norm
from .qwen_vision import QwenVisionTower, patch_positions, segment_ids


class Glm4vVisionTower(QwenVisionTower):
    def __init__(self, cfg: VisionConfig):
        super().__init__(cfg)
        t = cfg.tower
        n_pos = cfg.extra["num_position_embeddings"]
        self.side = math.isqrt(n_pos)
        if self.side * self.side != n_pos:
            raise ValueError(f"num_position_embeddings={n_pos} is not a square number (a side x side table)")
        self.pos_embed = nn.Embedding(n_pos, t.d_model)
        self.ln_conv = make_norm(t.normalization_type, t.d_model, t.norm_eps)
        self.ln_post = make_norm(t.normalization_type, t.d_model, t.norm_eps)
        self.hook_pos_embed = HookPoint()  # [1, n_patches, d_vision]

    def sampled_pos_embed(self, grid_thw: torch.Tensor) -> torch.Tensor:
        """[n_patches, d]: the table sampled bicubically at each patch centre of its image's (h, w) grid, in the
        processor's merge-block-major order (float32 sampling, as HF)."""
        weight = self.pos_embed.weight
        table = rearrange(weight.float(), "(r c) d -> 1 d r c", r=self.side)
        pos = patch_positions(grid_thw, self.merge).to(weight.device).float()  # [n, 2] (row, col)
        sizes = torch.cat([torch.tensor([[h, w]]).expand(t * h * w, 2) for t, h, w in grid_thw.tolist()])
        sizes = sizes.to(weight.device).float()
        norm = (pos + 0.5) / sizes * 2 - 1  # [n, 2] (row, col) in [-1, 1]
        grid = norm.flip(-1)[None, :, None, :]  # grid_sample reads (x = col, y = row)
        sampled = F.grid_sample(table, grid, mode="bicubic", align_corners=False, padding_mode="border")
        return rearrange(sampled, "1 d n 1 -> n d").to(weight.dtype)

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """pixel_values [n_patches, C * tp * p * p], grid_thw [n_images, 3] -> post-normed states [1, n_patches, d]."""
        cfg = self.cfg
        w = self.patch_embed.weight
        x = pixel_values.to(w.dtype).view(-1, cfg.n_channels, self.temporal_patch_size, cfg.patch_size, cfg.patch_size)
        x = self.ln_conv(self.patch_embed(x).view(1, -1, cfg.tower.d_model))
        pos = self.hook_pos_embed(self.sampled_pos_embed(grid_thw.cpu())[None])
        x = self.hook_embed(x + pos.to(x.dtype))
        n = x.shape[1]
        rotary = self.rotary(grid_thw, x.dtype)
        mask = AttentionMask(causal=False, key_padding=None, query_positions=torch.arange(n, device=x.device), k_len=n,
                             segment_ids=segment_ids(grid_thw.cpu(), self.merge, None)[None].to(x.device))
        for block in self.blocks:
            x = block(x, mask, rotary)
        return self.ln_post(x)  # read it at projector.hook_in
