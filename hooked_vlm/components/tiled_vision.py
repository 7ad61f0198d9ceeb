"""A tiled two-stage ViT (Mllama's vision model): each image is up to ``max_num_tiles`` square tiles; a local encoder
and a gated global encoder run over all tiles of an image at once; the output concatenates the global encoder's
last state with chosen local layers' states ("intermediate layers").

Steps (``pixel_values`` [image, tile, C, H, W], ``aspect_ratio_ids`` [image], ``aspect_ratio_mask`` [image, tile]):
patch conv -> ``vision.hook_patch_embed`` [image, tile, patch, d]; + tanh-gated aspect-ratio embedding
(``vision.pre_tile``: one vector per tile); a class token per tile; + gated positions (``vision.positions``:
(1 - tanh g) * per-patch embedding + tanh g * per-(aspect ratio, tile, patch) embedding) -> ``vision.hook_embed``
[image, tile, pos, d]; ``ln_pre``; each tile padded to a multiple of 8 positions; local blocks ``vision.blocks.{l}``
over [image, tile * pos_padded, d]; ``ln_post``; + gated aspect-ratio embedding (``vision.post_tile``); global blocks
``vision.global_blocks.{l}`` (tanh-gated residual adds); padding positions dropped; ``vision.hook_intermediate``
[image, tile, pos, d * k] (local layers ``feature_layers``, interleaved as HF stacks them: channel-major);
``vision.hook_out`` [image, tile, pos, d * (k + 1)].

The attention mask (HF's aspect-ratio mask): a query and a key that are BOTH padding (padded positions of a tile,
or any position of a padding tile) are masked; every other pair attends, so real patches also see padding.
"""

from __future__ import annotations

import dataclasses

import einops
import torch
import torch.nn.functional as F
from torch import nn

from ..config import VisionConfig
from ..hook_points import HookPoint
from .block import TransformerBlock
from .masks import AttentionMask
from .norms import LayerNorm

PAD_TO = 8  # HF pads each tile's positions to a multiple of 8


class AspectRatioEmbedding(nn.Module):
    """One learned vector per (aspect ratio, tile), added to every position of the tile, times tanh(gate)."""

    def __init__(self, max_aspect_ratio_id: int, max_tiles: int, d: int):
        super().__init__()
        self.max_tiles, self.d = max_tiles, d
        self.embedding = nn.Embedding(max_aspect_ratio_id + 1, max_tiles * d)
        self.gate = nn.Parameter(torch.zeros(1))
        self.hook_gate = HookPoint()  # [1]  tanh(gate)
        self.hook_out = HookPoint()  # [image, tile, 1, d]  what is added

    def forward(self, x: torch.Tensor, aspect_ratio_ids: torch.Tensor) -> torch.Tensor:  # x [image, tile, pos, d]
        emb = self.embedding(aspect_ratio_ids).reshape(-1, self.max_tiles, 1, self.d)
        return x + self.hook_out(emb * self.hook_gate(self.gate.tanh()))


class GatedPositions(nn.Module):
    """(1 - tanh g) * a per-position embedding + tanh g * a per-(aspect ratio, tile, position) embedding."""

    def __init__(self, max_aspect_ratio_id: int, max_tiles: int, n_pos: int, d: int):
        super().__init__()
        self.max_tiles, self.n_pos, self.d = max_tiles, n_pos, d
        self.embedding = nn.Parameter(torch.zeros(n_pos, d))
        self.tile_embedding = nn.Embedding(max_aspect_ratio_id + 1, max_tiles * n_pos * d)
        self.gate = nn.Parameter(torch.zeros(1))
        self.hook_gate = HookPoint()  # [1]  tanh(gate)
        self.hook_pos = HookPoint()  # [pos, d]  (1 - tanh g) * embedding
        self.hook_tile_pos = HookPoint()  # [image, tile, pos, d]  tanh g * tile embedding

    def forward(self, x: torch.Tensor, aspect_ratio_ids: torch.Tensor) -> torch.Tensor:  # x [image, tile, pos, d]
        gate = self.hook_gate(self.gate.tanh())
        x = x + self.hook_pos((1 - gate) * self.embedding).view(1, 1, self.n_pos, self.d)
        tile = self.tile_embedding(aspect_ratio_ids).reshape(x.shape[0], self.max_tiles, self.n_pos, self.d)
        return x + self.hook_tile_pos(gate * tile)


class TiledVisionTower(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        t, ex = cfg.tower, cfg.extra
        d, tiles, n_ar = t.d_model, ex["max_num_tiles"], ex["max_aspect_ratio_id"]
        self.n_pos = cfg.n_patches + 1  # class token first
        self.patch_embed = nn.Conv2d(cfg.n_channels, d, cfg.patch_size, cfg.patch_size, bias=cfg.patch_bias)
        self.class_embedding = nn.Parameter(torch.zeros(d))
        self.pre_tile = AspectRatioEmbedding(n_ar, tiles, d)
        self.positions = GatedPositions(n_ar, tiles, self.n_pos, d)
        self.post_tile = AspectRatioEmbedding(n_ar, tiles, d)
        self.ln_pre = LayerNorm(d, ex.get("ln_eps", 1e-5))
        self.ln_post = LayerNorm(d, ex.get("ln_eps", 1e-5))
        self.blocks = nn.ModuleList([TransformerBlock(t, l) for l in range(t.n_layers)])
        n_global = ex["global_layers"]
        global_cfg = dataclasses.replace(t, n_layers=n_global, tanh_gated_layers=tuple(range(n_global)))
        self.global_blocks = nn.ModuleList([TransformerBlock(global_cfg, l) for l in range(n_global)])

        self.hook_patch_embed = HookPoint()  # [image, tile, patch, d_vision]
        self.hook_embed = HookPoint()  # [image, tile, pos, d_vision]  (class token first; positions added)
        self.hook_intermediate = HookPoint()  # [image, tile, pos, d_vision * n_feature_layers]
        self.hook_out = HookPoint()  # [image, tile, pos, d_vision * (n_feature_layers + 1)]

    def forward(self, pixel_values: torch.Tensor, aspect_ratio_ids: torch.Tensor,
                aspect_ratio_mask: torch.Tensor) -> torch.Tensor:
        """pixel_values [image, tile, C, H, W] -> features [image, tile, pos, d_out]."""
        n_img, n_tiles = pixel_values.shape[:2]
        if n_tiles != self.cfg.extra["max_num_tiles"]:
            raise ValueError(f"pixel_values holds {n_tiles} tiles per image; this tower takes exactly max_num_tiles="
                             f"{self.cfg.extra['max_num_tiles']} (padding tiles included, as the processor writes)")
        x = self.patch_embed(pixel_values.flatten(0, 1).to(self.patch_embed.weight.dtype))  # [image*tile, d, r, c]
        x = self.hook_patch_embed(einops.rearrange(x, "(i t) d r c -> i t (r c) d", i=n_img))
        x = self.pre_tile(x, aspect_ratio_ids)
        cls = self.class_embedding.to(x.dtype).expand(n_img, n_tiles, 1, -1)
        x = self.hook_embed(self.positions(torch.cat([cls, x], dim=2), aspect_ratio_ids))
        x = self.ln_pre(x)
        n_pad = (PAD_TO - self.n_pos % PAD_TO) % PAD_TO
        x = F.pad(x, (0, 0, 0, n_pad))  # [image, tile, pos_padded, d]
        per_tile = self.n_pos + n_pad
        padding = torch.zeros(n_img, n_tiles, per_tile, dtype=torch.bool, device=x.device)
        padding[:, :, self.n_pos:] = True
        padding |= ~aspect_ratio_mask.to(x.device).bool()[..., None]
        k_len = n_tiles * per_tile
        mask = AttentionMask(causal=False, key_padding=None, query_positions=torch.arange(k_len, device=x.device),
                             k_len=k_len, pad_pairs=padding.reshape(n_img, k_len))

        x = x.reshape(n_img, k_len, -1)
        hidden = []  # HF's encoder states: the output of each local block
        for block in self.blocks:
            x = block(x, mask)
            hidden.append(x)
        x = self.ln_post(x).reshape(n_img, n_tiles, per_tile, -1)
        x = self.post_tile(x, aspect_ratio_ids).reshape(n_img, k_len, -1)
        for block in self.global_blocks:
            x = block(x, mask)

        def unpad(h: torch.Tensor) -> torch.Tensor:
            return h.reshape(n_img, n_tiles, per_tile, -1)[:, :, : self.n_pos]

        chosen = torch.stack([unpad(hidden[i]) for i in self.cfg.feature_layers], dim=-1)  # [..., d, k]
        inter = self.hook_intermediate(chosen.flatten(-2))  # channel-major, as HF's reshape of the stack
        return self.hook_out(torch.cat([unpad(x), inter], dim=-1))
