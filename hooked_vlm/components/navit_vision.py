"""A SigLIP-style ViT for variable-size images (Idefics3 / SmolVLM): no class token, padded images.

Each image (tile) may be padded; ``patch_mask`` [image, rows, cols] marks real patches. Real
patches get learned positions by bucketing their fractional (row, col) coordinates into the
square position table (NaViT "Patch n' Pack"); padded patches get position 0 and are masked as
keys. The last hidden state goes through ``ln_post`` (SigLIP's post_layernorm) to the projector.

Hooks: ``vision.hook_patch_embed`` [image, patch, d], ``vision.hook_embed`` (after positions),
``vision.blocks.{l}.*``, ``vision.ln_post.hook_normalized``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import VisionConfig
from ..hook_points import HookPoint
from .block import TransformerBlock
from .masks import AttentionMask
from .norms import make_norm


def bucketed_position_ids(patch_mask: torch.Tensor, side: int) -> torch.Tensor:
    """Position-table index of every patch [image, rows * cols] (HF Idefics3VisionEmbeddings, exactly)."""
    n, rows, cols = patch_mask.shape
    device = patch_mask.device
    boundaries = torch.arange(1 / side, 1.0, 1 / side, device=device)
    step_h = 1.0 / patch_mask[:, :, 0].sum(dim=1)
    step_w = 1.0 / patch_mask[:, 0, :].sum(dim=1)
    frac_h = (torch.arange(rows, device=device, dtype=torch.float32)[None, :] * step_h[:, None]).clamp(max=1.0 - 1e-6)
    frac_w = (torch.arange(cols, device=device, dtype=torch.float32)[None, :] * step_w[:, None]).clamp(max=1.0 - 1e-6)
    bucket_h = torch.bucketize(frac_h, boundaries, right=True)
    bucket_w = torch.bucketize(frac_w, boundaries, right=True)
    pos = (bucket_h[:, :, None] * side + bucket_w[:, None, :]).reshape(n, -1)
    return torch.where(patch_mask.reshape(n, -1), pos, torch.zeros_like(pos))


class NaViTVisionTower(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        t = cfg.tower
        self.patch_embed = nn.Conv2d(cfg.n_channels, t.d_model, cfg.patch_size, cfg.patch_size, bias=cfg.patch_bias)
        self.pos_embed = nn.Parameter(torch.zeros(cfg.n_patches, t.d_model))
        self.blocks = nn.ModuleList([TransformerBlock(t) for _ in range(t.n_layers)])
        self.ln_post = make_norm(t.normalization_type, t.d_model, t.norm_eps)
        self.hook_patch_embed = HookPoint()  # [image, patch, d_vision]
        self.hook_embed = HookPoint()  # [image, patch, d_vision] (after positions)

    def forward(self, pixel_values: torch.Tensor, patch_mask: torch.Tensor | None = None) -> torch.Tensor:
        """pixel_values [image, C, H, W], patch_mask [image, H / p, W / p] -> ln_post(last state) [image, patch, d]."""
        cfg = self.cfg
        x = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype))
        n, _, rows, cols = x.shape
        x = self.hook_patch_embed(x.flatten(2).transpose(1, 2))
        if patch_mask is None:
            patch_mask = torch.ones(n, rows, cols, dtype=torch.bool, device=x.device)
        positions = bucketed_position_ids(patch_mask.bool(), cfg.grid_size)
        x = self.hook_embed(x + nn.functional.embedding(positions, self.pos_embed).to(x.dtype))
        flat = patch_mask.reshape(n, -1).bool()
        mask = AttentionMask(causal=False, key_padding=None if bool(flat.all()) else flat,
                             query_positions=torch.arange(x.shape[1], device=x.device), k_len=x.shape[1])
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_post(x)  # read it at projector.hook_in
