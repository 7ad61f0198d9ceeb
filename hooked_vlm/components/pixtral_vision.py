"""Pixtral's ViT: images of any size, 2D (axial) RoPE, all images packed into one block-diagonal sequence.

Each image keeps its own patch grid (its size // patch_size). Patches of all images are concatenated
into ONE sequence ([1, total_patches, d], exactly as HF does) and attention is block-diagonal: a patch
attends only to patches of its own image. Positions are 2D: the rotary angle of a patch at (row, col)
is ``cat(row * inv_freq[0::2], col * inv_freq[1::2])`` (HF's axial recomposition), rotate-half style.

Hook names under ``vision.``: ``hook_patch_embed`` [1, patch, d], ``ln_pre.hook_*``, ``blocks.{l}.*``.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

from ..config import VisionConfig
from ..hook_points import HookPoint
from .block import TransformerBlock
from .masks import AttentionMask
from .norms import make_norm


def axial_inv_freq(d_head: int, theta: float) -> Float[Tensor, " half_d_head"]:
    """[d_head // 2]: the frequencies of rows (first half) then of columns (second half)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, d_head, 2, dtype=torch.float) / d_head))
    return torch.cat([inv_freq[0::2], inv_freq[1::2]])


class PixtralVisionTower(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        t = cfg.tower
        self.patch_embed = nn.Conv2d(cfg.n_channels, t.d_model, cfg.patch_size, cfg.patch_size, bias=cfg.patch_bias)
        self.ln_pre = make_norm(t.normalization_type, t.d_model, t.norm_eps)
        self.blocks = nn.ModuleList([TransformerBlock(t) for _ in range(t.n_layers)])
        self.register_buffer("inv_freq", torch.empty(t.d_head // 2), persistent=False)
        self.reset_buffers()
        self.hook_patch_embed = HookPoint()  # [1, patch, d_vision] (all images' patches, packed)

    def reset_buffers(self) -> None:
        """(Re)compute the rotary table; called again after a model built on 'meta' is materialised."""
        with torch.device("cpu"):
            inv_freq = axial_inv_freq(self.cfg.tower.d_head, float(self.cfg.extra["rope_theta"]))
        if self.inv_freq.device.type != "meta":
            self.inv_freq = inv_freq.to(self.inv_freq.device)

    def grids(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None) -> list[tuple[int, int]]:
        """(rows, cols) of patches of every image (its true size, not the padded batch size)."""
        p = self.cfg.patch_size
        if image_sizes is None:
            return [(pixel_values.shape[-2] // p, pixel_values.shape[-1] // p)] * pixel_values.shape[0]
        return [(int(h) // p, int(w) // p) for h, w in torch.as_tensor(image_sizes).tolist()]

    def rotary(self, grids: list[tuple[int, int]], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [1, patch, 1, d_head] for the packed patches."""
        device = self.inv_freq.device
        pos = torch.cat([torch.stack(torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device),
                                                    indexing="ij"), -1).reshape(-1, 2) for h, w in grids])
        freqs = pos[..., None].float() * self.inv_freq.float()  # [patch, 2, d_head // 2]
        quarter = freqs.shape[-1] // 2
        angles = torch.cat([freqs[:, 0, :quarter], freqs[:, 1, quarter:]], -1)
        emb = torch.cat([angles, angles], -1)
        return emb.cos().to(dtype)[None, :, None], emb.sin().to(dtype)[None, :, None]

    def forward(self, pixel_values: Float[Tensor, "image channel height width"], grids: list[tuple[int, int]]
                ) -> Float[Tensor, "1 patch d"]:
        """pixel_values [image, channel, H_max, W_max] -> selected features [1, total_patches, d]."""
        x = self.patch_embed(pixel_values.to(self.patch_embed.weight.dtype))  # [image, d, rows, cols]
        x = torch.cat([e[:, :h, :w].flatten(1).T for e, (h, w) in zip(x, grids)], 0)[None]
        x = self.ln_pre(self.hook_patch_embed(x))
        n = x.shape[1]
        image_of_patch = torch.repeat_interleave(torch.arange(len(grids), device=x.device),
                                                 torch.tensor([h * w for h, w in grids], device=x.device))
        mask = AttentionMask(causal=False, key_padding=None, query_positions=torch.arange(n, device=x.device),
                             k_len=n, segment_ids=image_of_patch[None])  # block-diagonal: one block per image
        rotary = self.rotary(grids, x.dtype)
        hidden = [x]  # HF's hidden_states: [input of block 0, block 0 out, ...]
        for block in self.blocks:
            x = block(x, mask, rotary)
            hidden.append(x)
        return torch.cat([hidden[i] for i in self.cfg.feature_layers], dim=-1)  # read it at projector.hook_in
