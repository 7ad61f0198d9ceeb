"""A SigLIP2 NaFlex tower (LFM2-VL): images of any aspect ratio as padded sequences of flattened patches.

Inputs, as the Siglip2 / LFM2-VL image processors make them: ``pixel_values`` [image, max_patches, C * p * p] (each
row one patch, channels last within it), ``patch_mask`` [image, max_patches] (True at real patches, which come
first, row-major over the image's ``rows x cols`` grid) and ``spatial_shapes`` [image, 2] = (rows, cols).

Positions: the learned table [side * side, d] is a ``side x side`` grid; for every image it is resized to the image's
``rows x cols`` grid (bilinear, antialiased, align_corners=False, in float32 -- HF ``resize_positional_embeddings``
exactly) and added to the real patches; padded patches get the resized grid's first entry (as HF) and are masked as
keys. The last hidden state goes through ``ln_post`` (post_layernorm) to the projector.

Hooks: ``vision.hook_patch_embed`` [image, patch, d] (the linear patch embedding), ``vision.hook_pos_embed``
[image, patch, d] (the resized position embeddings), ``vision.hook_embed`` (their sum), ``vision.blocks.{l}.*``,
``vision.ln_post.hook_normalized``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import VisionConfig
from ..hook_points import HookPoint
from .block import TransformerBlock
from .masks import AttentionMask
from .norms import make_norm


def resized_positions(table: torch.Tensor, spatial_shapes: torch.Tensor, length: int) -> torch.Tensor:
    """The ``side x side`` table [side * side, d] resized to each image's grid, padded to ``length`` with the first
    entry: [image, length, d] (HF Siglip2VisionEmbeddings.resize_positional_embeddings)."""
    side = int(round(table.shape[0] ** 0.5))
    d = table.shape[-1]
    grid = table.reshape(side, side, d).permute(2, 0, 1)[None]  # [1, d, side, side]
    if grid.device.type == "cpu":  # HF: antialias is not implemented for half precision on CPU
        grid = grid.float()
    out = table.new_empty(spatial_shapes.shape[0], length, d)
    for i, (rows, cols) in enumerate(spatial_shapes.tolist()):
        if rows <= 0 or cols <= 0 or rows * cols > length:
            raise ValueError(f"image {i}: spatial_shapes ({rows}, {cols}) must be positive with rows * cols <= "
                             f"{length} patches (pixel_values' patch axis); use the model's image processor")
        resized = F.interpolate(grid, size=(rows, cols), mode="bilinear", align_corners=False, antialias=True)
        resized = resized.reshape(d, rows * cols).transpose(0, 1).to(table.dtype)
        out[i, : rows * cols] = resized
        out[i, rows * cols:] = resized[0]
    return out


class NaFlexVisionTower(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        t = cfg.tower
        p = cfg.patch_size
        self.patch_embed = nn.Linear(cfg.n_channels * p * p, t.d_model, bias=cfg.patch_bias)
        self.pos_embed = nn.Parameter(torch.zeros(cfg.n_patches, t.d_model))  # a grid_size x grid_size table
        self.blocks = nn.ModuleList([TransformerBlock(t) for _ in range(t.n_layers)])
        self.ln_post = make_norm(t.normalization_type, t.d_model, t.norm_eps)
        self.hook_patch_embed = HookPoint()  # [image, patch, d_vision]
        self.hook_pos_embed = HookPoint()  # [image, patch, d_vision] (resized to each image's grid)
        self.hook_embed = HookPoint()  # [image, patch, d_vision] (patch + position embeddings)

    def forward(self, pixel_values: torch.Tensor, patch_mask: torch.Tensor, spatial_shapes: torch.Tensor) -> torch.Tensor:
        """pixel_values [image, patch, C * p * p], patch_mask [image, patch], spatial_shapes [image, 2]
        -> ln_post(last hidden state) [image, patch, d_vision] (padded patches hold junk; the projector drops them)."""
        cfg = self.cfg
        n, length, width = pixel_values.shape
        if width != cfg.n_channels * cfg.patch_size**2:
            raise ValueError(f"pixel_values has {width} values per patch; this tower takes {cfg.n_channels} channels "
                             f"x {cfg.patch_size} x {cfg.patch_size} = {cfg.n_channels * cfg.patch_size ** 2}")
        x = self.hook_patch_embed(self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype)))
        pos = self.hook_pos_embed(resized_positions(self.pos_embed, spatial_shapes, length).to(x.dtype))
        x = self.hook_embed(x + pos)
        keep = patch_mask.bool().to(x.device)
        mask = AttentionMask(causal=False, key_padding=None if bool(keep.all()) else keep,
                             query_positions=torch.arange(length, device=x.device), k_len=length)
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_post(x)  # read it at projector.hook_in
