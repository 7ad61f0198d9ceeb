"""A packed-patch ViT with a learned position grid resized to every image (HunYuanVL's vision tower, kind
``hunyuan_vit``): no rotary, pre-norm blocks (the shared block with the tower's TowerConfig), attention within each image.

Input: flattened patches [n_patches, channels * patch * patch] in row-major order per image (the image processor's
``pixel_values``; ``temporal_patch_size`` 1) and ``image_grid_thw`` [n_images, 3]. The patches of all images run as ONE
sequence ([1, n_patches, d]); attention stays within each image frame through segment ids.
Positions: a learned ``edge x edge`` table (``pos_embed`` rows 1..edge**2; row 0 is a never-read class slot, kept so the
checkpoint loads as is) resized to each image's (h, w) grid by ``F.interpolate`` (``interpolate_mode``,
``align_corners=False``) and added to the patch embeddings (HF's ``HunYuanVLVisionPatchEmbed``).
Hooks: ``hook_patch_embed`` [1, n_patches, d] (the conv), ``hook_pos_embed`` [1, n_patches, d] (what is added),
``hook_embed`` [1, n_patches, d] (the sum, block 0's input).
Settings in ``VisionConfig.extra``: position_edge, interpolate_mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..config import VisionConfig
from ..hook_points import HookPoint
from .block import TransformerBlock
from .masks import AttentionMask
from .qwen_vision import segment_ids


class GridPositionViT(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        t, x = cfg.tower, cfg.extra
        self.edge = x["position_edge"]
        self.interpolate_mode = x.get("interpolate_mode", "bilinear")
        self.patch_embed = nn.Conv2d(cfg.n_channels, t.d_model, cfg.patch_size, cfg.patch_size, bias=cfg.patch_bias)
        self.pos_embed = nn.Embedding(self.edge * self.edge + 1, t.d_model)  # row 0: unused class slot (HF's layout)
        self.blocks = nn.ModuleList([TransformerBlock(t) for _ in range(t.n_layers)])
        self.hook_patch_embed = HookPoint()  # [1, n_patches, d_vision]
        self.hook_pos_embed = HookPoint()  # [1, n_patches, d_vision]
        self.hook_embed = HookPoint()  # [1, n_patches, d_vision]

    def resized_pos_embed(self, grid_thw: torch.Tensor) -> torch.Tensor:
        """[n_patches, d]: the table resized to each image's (h, w) grid, row-major, repeated over its t frames."""
        table = rearrange(self.pos_embed.weight[1:].float(), "(r c) d -> 1 d r c", r=self.edge)
        out = []
        for t, h, w in grid_thw.tolist():
            grid = F.interpolate(table, size=(h, w), mode=self.interpolate_mode, align_corners=False)
            out.append(rearrange(grid, "1 d h w -> (h w) d").repeat(t, 1))
        return torch.cat(out).to(self.pos_embed.weight.dtype)

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """pixel_values [n_patches, C * p * p], grid_thw [n_images, 3] -> last hidden state [1, n_patches, d]."""
        cfg = self.cfg
        w = self.patch_embed.weight
        x = self.patch_embed(pixel_values.to(w.dtype).view(-1, cfg.n_channels, cfg.patch_size, cfg.patch_size))
        x = self.hook_patch_embed(x.view(1, -1, cfg.tower.d_model))
        pos = self.hook_pos_embed(self.resized_pos_embed(grid_thw.cpu())[None].to(x.device))
        x = self.hook_embed(x + pos.to(x.dtype))
        n = x.shape[1]
        mask = AttentionMask(causal=False, key_padding=None, query_positions=torch.arange(n, device=x.device), k_len=n,
                             segment_ids=segment_ids(grid_thw.cpu(), 1, None)[None].to(x.device))
        for block in self.blocks:
            x = block(x, mask)
        return x  # read it at projector.hook_in
