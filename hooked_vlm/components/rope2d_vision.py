"""A fixed-size ViT with BOTH learned absolute positions and 2-D axial RoPE (kind ``vit_rope2d``; Llama 4's tower).

Square tiles ``[tile, channel, image_size, image_size]``, every tile its own sequence (no packing):

- Patch embedding: each ``patch_size`` x ``patch_size`` patch unfolded (channel-major, as ``nn.Unfold``) and mapped
  by a Linear without bias (``patch_embed``): ``hook_patch_embed`` [tile, patch, d_vision], patches row-major.
- The class token (``VisionConfig.class_token``) goes AFTER the patches when ``extra["class_token_last"]``, else
  before; the learned table ``pos_embed`` [patch + 1, d] in the same order: ``hook_embed`` [tile, pos, d_vision].
- ``ln_pre`` (``VisionConfig.ln_pre``), the shared blocks (bidirectional), ``ln_post`` when ``extra["ln_post"]``.
- 2-D RoPE on every block (``TowerConfig.rope_axes = 2``, ``rope_interleaved``): the first half of each head turns
  with the patch column, the second with its row, on (even, odd) pairs; frequencies ``theta ** (-j / (d_head / 4))``
  for j < d_head / 4 (``extra["rope_theta"]``); coordinates start at ``extra["rope_position_offset"]`` (Llama 4: 1);
  the class token is not turned (angle 0).
- Output: the last block (after ``ln_post``) without the class token: [tile, patch, d_vision], read at
  ``projector.hook_in``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from ..config import VisionConfig
from ..hook_points import HookPoint
from .block import TransformerBlock
from .masks import AttentionMask
from .norms import make_norm
from .rope import axis_inv_freq


class Rope2DVisionTower(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        t, ex = cfg.tower, cfg.extra
        if t.rope_axes != 2 or t.d_head % 4:
            raise ValueError(f"vit_rope2d: the tower needs rope_axes=2 and d_head divisible by 4; got rope_axes="
                             f"{t.rope_axes}, d_head={t.d_head}")
        if tuple(cfg.feature_layers) != (-1,) or cfg.feature_select != "default":
            raise ValueError("vit_rope2d feeds its last layer without the class token: feature_layers must be (-1,) and "
                             f"feature_select 'default'; got {cfg.feature_layers}, {cfg.feature_select!r}")
        self.class_last = bool(ex.get("class_token_last", False))
        self.offset = int(ex.get("rope_position_offset", 0))
        self.patch_embed = nn.Linear(cfg.n_channels * cfg.patch_size**2, t.d_model, bias=cfg.patch_bias)
        self.class_embedding = nn.Parameter(torch.zeros(t.d_model)) if cfg.class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(cfg.n_patches + int(cfg.class_token), t.d_model))
        self.ln_pre = make_norm(t.normalization_type, t.d_model, t.norm_eps) if cfg.ln_pre else None
        self.blocks = nn.ModuleList([TransformerBlock(t, l) for l in range(t.n_layers)])
        self.ln_post = make_norm(t.normalization_type, t.d_model, t.norm_eps) if ex.get("ln_post") else None
        self.register_buffer("inv_freq", torch.empty(t.d_head // 4), persistent=False)
        self.reset_buffers()
        self.hook_patch_embed = HookPoint()  # [tile, patch, d_vision]
        self.hook_embed = HookPoint()  # [tile, pos, d_vision] (patches row-major; the class token last or first)

    def reset_buffers(self) -> None:
        """(Re)compute the rotary frequencies; called again after a model built on 'meta' is materialised."""
        inv_freq = axis_inv_freq(self.cfg.tower.d_head, float(self.cfg.extra["rope_theta"]))
        if self.inv_freq.device.type != "meta":
            self.inv_freq = inv_freq.to(self.inv_freq.device)

    def rotary(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos, sin [1, pos, 1, d_head]: per position (col, col, ..., row, row, ...) angles, each repeated for its
        (even, odd) pair; the class token's angles are 0."""
        g = self.cfg.grid_size
        idx = torch.arange(g * g, device=self.inv_freq.device)
        coords = torch.stack([idx % g, idx // g], -1).float() + self.offset  # [patch, (x = col, y = row)]
        freqs = coords[..., None] * self.inv_freq.float()  # [patch, 2, d_head // 4]
        emb = torch.cat([freqs[:, 0].repeat_interleave(2, -1), freqs[:, 1].repeat_interleave(2, -1)], -1)
        if self.class_embedding is not None:
            cls = torch.zeros(1, emb.shape[-1], device=emb.device)
            emb = torch.cat([emb, cls] if self.class_last else [cls, emb], 0)
        return emb.cos().to(dtype)[None, :, None], emb.sin().to(dtype)[None, :, None]

    def forward(self, pixel_values: Float[Tensor, "tile channel height width"]) -> Float[Tensor, "tile patch d"]:
        p = self.cfg.patch_size
        x = F.unfold(pixel_values.to(self.patch_embed.weight.dtype), kernel_size=p, stride=p).transpose(1, 2)
        x = self.hook_patch_embed(self.patch_embed(x))  # [tile, patch, d]
        if self.class_embedding is not None:
            cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
            x = torch.cat([x, cls] if self.class_last else [cls, x], dim=1)
        x = self.hook_embed(x + self.pos_embed.to(x.dtype))
        if self.ln_pre is not None:
            x = self.ln_pre(x)
        n = x.shape[1]
        mask = AttentionMask(causal=False, key_padding=None, query_positions=torch.arange(n, device=x.device), k_len=n)
        rotary = self.rotary(x.dtype)
        for block in self.blocks:
            x = block(x, mask, rotary)
        if self.ln_post is not None:
            x = self.ln_post(x)
        if self.class_embedding is not None:
            x = x[:, :-1] if self.class_last else x[:, 1:]
        return x  # read it at projector.hook_in
