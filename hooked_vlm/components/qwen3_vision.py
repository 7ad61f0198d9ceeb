"""The Qwen3-VL ViT: the Qwen2-VL packed-patch tower (fused qkv, 2-D axial rotary, attention within each image)
plus a learned position embedding and DeepStack outputs.

Position embedding: a square table of ``num_position_embeddings`` vectors (``side x side``) is resized to each
image's patch grid by bilinear interpolation with aligned corners (``F.interpolate``; HF computes the same with
gather indices and weights) and added to the patch embeddings. ``hook_pos_embed`` [1, n_patches, d] is what is
added; ``hook_embed`` is the sum (the input of block 0).
DeepStack: the hidden states after the blocks listed in ``extra["deepstack_visual_indexes"]`` are returned next to
the last one (read them at ``vision.blocks.{i}.hook_resid_post`` or ``projector.deepstack.{j}.hook_in``).

Settings in ``VisionConfig.extra``: those of :class:`QwenVisionTower` plus num_position_embeddings and
deepstack_visual_indexes.
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
from .qwen_vision import QwenVisionTower, segment_ids


class Qwen3VisionTower(QwenVisionTower):
    def __init__(self, cfg: VisionConfig):
        super().__init__(cfg)
        n_pos = cfg.extra["num_position_embeddings"]
        self.side = math.isqrt(n_pos)
        if self.side * self.side != n_pos:
            raise ValueError(f"num_position_embeddings={n_pos} is not a square number (a side x side table)")
        self.pos_embed = nn.Embedding(n_pos, cfg.tower.d_model)
        self.deepstack_indexes = list(cfg.extra.get("deepstack_visual_indexes", ()))
        bad = [i for i in self.deepstack_indexes if not 0 <= i < cfg.tower.n_layers]
        if bad or self.deepstack_indexes != sorted(set(self.deepstack_indexes)):
            raise ValueError(f"deepstack_visual_indexes {self.deepstack_indexes} must be increasing blocks of the "
                             f"{cfg.tower.n_layers}-block tower (HF pairs merger i with the i-th listed block only then)")
        self.hook_pos_embed = HookPoint()  # [1, n_patches, d_vision]

    def interpolated_pos_embed(self, grid_thw: torch.Tensor) -> torch.Tensor:
        """[n_patches, d]: the table resized to each (h, w) grid, in the processor's merge-block-major order."""
        table = rearrange(self.pos_embed.weight, "(r c) d -> 1 d r c", r=self.side)
        out = []
        for t, h, w in grid_thw.tolist():
            grid = F.interpolate(table.float(), size=(h, w), mode="bilinear", align_corners=True)[0]
            cells = rearrange(grid, "d (hb m1) (wb m2) -> (hb wb m1 m2) d", m1=self.merge, m2=self.merge)
            out.append(cells.repeat(t, 1))
        return torch.cat(out).to(self.pos_embed.weight.dtype)

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """-> (last hidden state [1, n_patches, d], hidden states after each DeepStack block [1, n_patches, d])."""
        cfg = self.cfg
        w = self.patch_embed.weight
        x = pixel_values.to(w.dtype).view(-1, cfg.n_channels, self.temporal_patch_size, cfg.patch_size, cfg.patch_size)
        x = self.patch_embed(x).view(1, -1, cfg.tower.d_model)
        pos = self.hook_pos_embed(self.interpolated_pos_embed(grid_thw.cpu())[None])
        x = self.hook_embed(x + pos.to(x.dtype))
        n = x.shape[1]
        rotary = self.rotary(grid_thw, x.dtype)
        mask = AttentionMask(causal=False, key_padding=None, query_positions=torch.arange(n, device=x.device), k_len=n,
                             segment_ids=segment_ids(grid_thw.cpu(), self.merge, None)[None].to(x.device))
        levels = []
        for l, block in enumerate(self.blocks):
            x = block(x, mask, rotary)
            if l in self.deepstack_indexes:
                levels.append(x)
        return x, levels
