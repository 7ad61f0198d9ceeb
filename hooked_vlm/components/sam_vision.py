"""SAM's ViT image encoder (GOT-OCR2's vision tower, DeepSeek-VL-Hybrid's high-resolution tower): a biased patch
conv, an absolute position table [1, grid, grid, d] (``extra["abs_pos"]``), pre-LN blocks whose token mixer is
windowed or global attention with decomposed relative positions (``TowerConfig.layer_types`` /
``rel_pos_attention``: components/rel_pos_attention.py), then a conv neck (components/conv_neck.py) to
``extra["d_neck"]`` channels.

Hooks: ``vision.hook_patch_embed`` [image, patch, d], ``vision.hook_embed`` [image, patch, d] (positions added: the
input of block 0), ``vision.blocks.{l}.*`` (the shared block: residuals [image, patch, d]; the mixer's hooks are per
window), ``vision.neck.hook_out`` [image, patch, d_neck]. Patches are row-major over the grid everywhere.

``forward`` returns the neck output and the hidden states named by ``feature_layers`` (HF's indexing: 0 = the
embeddings, i = after block i-1; DeepSeek-VL-Hybrid reads the first global layer's output beside the neck's).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import VisionConfig
from ..hook_points import HookPoint
from .block import TransformerBlock
from .conv_neck import ConvNeck
from .masks import AttentionMask


class SamVisionTower(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        t = cfg.tower
        g = cfg.grid_size
        self.patch_embed = nn.Conv2d(cfg.n_channels, t.d_model, cfg.patch_size, cfg.patch_size, bias=cfg.patch_bias)
        self.pos_embed = nn.Parameter(torch.zeros(1, g, g, t.d_model)) if cfg.extra.get("abs_pos", True) else None
        self.blocks = nn.ModuleList([TransformerBlock(t, layer) for layer in range(t.n_layers)])
        self.neck = ConvNeck(t.d_model, cfg.extra["d_neck"], cfg.extra.get("neck_eps", 1e-6))
        self.hook_patch_embed = HookPoint()  # [image, patch, d_vision]
        self.hook_embed = HookPoint()  # [image, patch, d_vision]

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """pixel_values [image, channel, size, size] -> (neck output [image, patch, d_neck], the hidden states of
        ``cfg.feature_layers``, each [image, patch, d_vision])."""
        cfg = self.cfg
        x = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype))  # [image, d, rows, cols]
        x = self.hook_patch_embed(x.flatten(2).transpose(1, 2))
        if self.pos_embed is not None:
            x = x + self.pos_embed.to(x.dtype).flatten(1, 2)
        x = self.hook_embed(x)
        n = x.shape[1]
        mask = AttentionMask(causal=False, key_padding=None, query_positions=torch.arange(n, device=x.device), k_len=n)
        hidden = [x]  # HF's hidden_states: [embeddings, block 0 out, block 1 out, ...]
        for block in self.blocks:
            x = block(x, mask)
            hidden.append(x)
        return self.neck(x, cfg.grid_size), [hidden[i] for i in cfg.feature_layers]
