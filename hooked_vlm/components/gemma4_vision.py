"""Gemma 4's image tower (``gemma4_vision``) and its projector: images of any size as patch lists, 2-D RoPE, position
pooling, standardisation.

Inputs (what Gemma4ImageProcessor returns): ``pixel_values`` [image, max_patches, 3 * patch ** 2] (patches already cut,
values in [0, 1]; padding patches after each image's own) and ``image_position_ids`` [image, max_patches, 2] holding
each patch's (x = column, y = row), (-1, -1) at padding.

- Patch embedding: ``patch_embed(2 * (pixels - 0.5))`` plus a learned table per axis, ``position_table[0][x] +
  position_table[1][y]`` (zero at padding): ``hook_patch_embed`` [image, patch, d_vision].
- Blocks: the shared TransformerBlock (sandwich RMS norms, RMS q / k norms, weightless value norm, attention scale
  1.0), bidirectional within each image, padding keys masked; 2-D RoPE with ``TowerConfig.rope_axes = 2``: the first
  half of each head turns with x, the second with y (each half rotate-half style, frequencies from d_head / 2).
- Pooling: the patches of each k x k cell (k = ``pooling_kernel``) are averaged (by position), times sqrt(d_vision),
  in float32; the pooled cells of every image in row-major order, padding cells dropped: ``hook_pooled``
  [n_soft_tokens, d_vision]; with ``standardize`` ``(x - std_bias) * std_scale``: ``hook_standardized``.
- Projector (``UnitNormLinearProjector``): a weightless RMS norm then a linear map to d_model (HF's embed_vision).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from ..config import ProjectorConfig, VisionConfig
from ..hook_points import HookPoint
from .block import TransformerBlock
from .masks import AttentionMask
from .norms import UnitRMSNorm
from .rope import axis_inv_freq


class Gemma4VisionTower(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        t, ex = cfg.tower, cfg.extra
        self.patch_embed = nn.Linear(cfg.n_channels * cfg.patch_size**2, t.d_model, bias=False)
        self.position_table = nn.Parameter(torch.zeros(2, ex["position_embedding_size"], t.d_model))  # [axis, pos, d]
        self.blocks = nn.ModuleList([TransformerBlock(t, l) for l in range(t.n_layers)])
        self.kernel = int(ex["pooling_kernel"])
        self.standardize = bool(ex.get("standardize"))
        if self.standardize:
            self.register_buffer("std_bias", torch.zeros(t.d_model))  # stored buffers, as in HF
            self.register_buffer("std_scale", torch.ones(t.d_model))
        self.register_buffer("inv_freq", torch.empty(t.d_head // 4), persistent=False)
        self.reset_buffers()
        self.hook_patch_embed = HookPoint()  # [image, patch, d_vision]
        self.hook_pooled = HookPoint()  # [n_soft_tokens, d_vision]
        if self.standardize:
            self.hook_standardized = HookPoint()  # [n_soft_tokens, d_vision]

    def reset_buffers(self) -> None:
        """(Re)compute the rotary table; called again after a model built on 'meta' is materialised."""
        inv_freq = axis_inv_freq(self.cfg.tower.d_head, float(self.cfg.extra["rope_theta"]))
        if self.inv_freq.device.type != "meta":
            self.inv_freq = inv_freq.to(self.inv_freq.device)

    def rotary(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """positions [image, patch, 2] -> cos, sin [image, patch, 1, d_head]: (x, x, y, y) quarters (HF's layout)."""
        freqs = positions[..., None].float() * self.inv_freq.float()  # [image, patch, 2, d_head // 4]
        emb = torch.cat([freqs[..., 0, :], freqs[..., 0, :], freqs[..., 1, :], freqs[..., 1, :]], dim=-1)
        return emb.cos().to(dtype)[:, :, None], emb.sin().to(dtype)[:, :, None]

    def grids(self, positions: Tensor) -> list[tuple[int, int]]:
        """(rows, cols) of the pooled grid of each image."""
        out = []
        for i, pos in enumerate(positions):
            valid = pos[(pos >= 0).all(-1)]
            if valid.numel() == 0:
                raise ValueError(f"image {i} has no patches (image_position_ids all -1)")
            cols, rows = (int(valid[:, 0].max()) + 1), (int(valid[:, 1].max()) + 1)
            if rows % self.kernel or cols % self.kernel or valid.shape[0] != rows * cols:
                raise ValueError(f"image {i}: its {valid.shape[0]} patches ({rows} x {cols} grid) do not tile into "
                                 f"{self.kernel} x {self.kernel} pooling cells; use Gemma4ImageProcessor's output")
            out.append((rows // self.kernel, cols // self.kernel))
        return out

    def forward(self, pixel_values: Float[Tensor, "image patch pixels"], positions: Int[Tensor, "image patch 2"]
                ) -> tuple[Float[Tensor, "n_soft_tokens d"], list[tuple[int, int]]]:
        grids = self.grids(positions)
        padding = (positions == -1).all(-1)  # [image, patch]
        clamped = positions.clamp(min=0)
        x = self.patch_embed((2 * (pixel_values - 0.5)).to(self.patch_embed.weight.dtype))
        table = F.embedding(clamped[..., 0], self.position_table[0]) + F.embedding(clamped[..., 1], self.position_table[1])
        x = self.hook_patch_embed(x + torch.where(padding[..., None], 0.0, table).to(x.dtype))
        n = x.shape[1]
        mask = AttentionMask(causal=False, key_padding=~padding, query_positions=torch.arange(n, device=x.device), k_len=n)
        rotary = self.rotary(clamped, x.dtype)
        for block in self.blocks:
            x = block(x, mask, rotary)
        return self._pool(x, clamped, padding, grids), grids

    def _pool(self, x: Tensor, clamped: Tensor, padding: Tensor, grids: list[tuple[int, int]]) -> Tensor:
        """Average each k x k cell (HF's _avg_pool_by_positions), times sqrt(d), padding cells dropped."""
        k = self.kernel
        length = x.shape[1] // (k * k)
        x = x.masked_fill(padding[..., None], 0.0)
        if length != x.shape[1]:
            cols = clamped[..., 0].max(dim=-1, keepdim=True)[0] + 1
            cell = torch.div(clamped, k, rounding_mode="floor")
            index = cell[..., 0] + (cols // k) * cell[..., 1]
            weights = F.one_hot(index.long(), length).float() / (k * k)  # [image, patch, cell]
            x = weights.transpose(1, 2) @ x.float()
        pooled = torch.cat([img[: r * c] for img, (r, c) in zip(x.float() * self.cfg.tower.d_model**0.5, grids)])
        pooled = self.hook_pooled(pooled)
        if self.standardize:
            pooled = self.hook_standardized((pooled - self.std_bias.float()) * self.std_scale.float())
        return pooled.to(self.patch_embed.weight.dtype)


class UnitNormLinearProjector(nn.Module):
    """Gemma 4's embed_vision: a weightless RMS norm, then a linear map to d_model (no bias)."""

    def __init__(self, cfg: ProjectorConfig):
        super().__init__()
        self.norm = UnitRMSNorm(float(cfg.extra["norm_eps"]))
        self.linear = nn.Linear(cfg.d_in, cfg.d_out, bias=False)  # weight [d_model, d_vision]
        self.hook_in = HookPoint()  # [n_soft_tokens, d_vision]
        self.hook_out = HookPoint()  # [n_soft_tokens, d_model]

    def forward(self, features: Tensor) -> Tensor:
        return self.hook_out(self.linear(self.norm(self.hook_in(features))))
