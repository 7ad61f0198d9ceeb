"""A ViT image encoder (CLIP-style): patch conv, optional class token, learned positions, pre-norm blocks.

Hook names live under ``vision.``: ``vision.hook_patch_embed``, ``vision.ln_patch.*`` (``patch_norm``: a norm
on the patch embeddings before positions, AIMv2), ``vision.hook_embed`` (after positions), ``vision.ln_pre.hook_normalized``, ``vision.blocks.{l}.*``. The selected hidden states
handed to the projector are ``projector.hook_in``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import VisionConfig
from ..hook_points import HookPoint
from .block import TransformerBlock
from .masks import AttentionMask
from .norms import make_norm


class VisionTower(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        t = cfg.tower
        self.patch_embed = nn.Conv2d(cfg.n_channels, t.d_model, cfg.patch_size, cfg.patch_size, bias=cfg.patch_bias)
        self.class_embedding = nn.Parameter(torch.zeros(t.d_model)) if cfg.class_token else None
        n_pos = cfg.n_patches + int(cfg.class_token)
        self.pos_embed = nn.Parameter(torch.zeros(n_pos, t.d_model)) if t.positional == "learned" else None
        self.ln_pre = make_norm(t.normalization_type, t.d_model, t.norm_eps) if cfg.ln_pre else None
        # a norm on the patch embeddings before positions (AIMv2); vision.ln_patch.hook_normalized [image, patch, d]
        self.ln_patch = make_norm(t.normalization_type, t.d_model, t.norm_eps) if cfg.patch_norm else None
        self.blocks = nn.ModuleList([TransformerBlock(t) for _ in range(t.n_layers)])

        self.hook_patch_embed = HookPoint()  # [image, patch, d_vision]
        self.hook_embed = HookPoint()  # [image, pos, d_vision] (class token first when present)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [image, channel, height, width] -> selected features [image, pos, d]."""
        cfg = self.cfg
        x = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype))  # [image, d, rows, cols]
        x = self.hook_patch_embed(x.flatten(2).transpose(1, 2))
        if self.ln_patch is not None:
            x = self.ln_patch(x)
        if self.class_embedding is not None:
            cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
            x = torch.cat([cls, x], dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed.to(x.dtype)
        x = self.hook_embed(x)
        if self.ln_pre is not None:
            x = self.ln_pre(x)

        n_pos = x.shape[1]
        mask = AttentionMask(causal=False, key_padding=None, query_positions=torch.arange(n_pos, device=x.device), k_len=n_pos)
        hidden = [x]  # HF's hidden_states: [embeddings, block 0 out, block 1 out, ...]
        for block in self.blocks:
            x = block(x, mask)
            hidden.append(x)

        selected = [hidden[i] for i in cfg.feature_layers]
        if cfg.feature_select == "default" and cfg.class_token:
            selected = [h[:, 1:] for h in selected]
        return torch.cat(selected, dim=-1)  # read it at projector.hook_in
