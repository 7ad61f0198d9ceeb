"""The Qwen2-VL / Qwen2.5-VL ViT: native-resolution patches of all images packed into one sequence.

Input: flattened patches [n_patches, channels * temporal_patch * patch * patch] (the HF image
processor's ``pixel_values``, each image's patches in merge-block-major order) and
``image_grid_thw`` [n_images, 3] (grid in patches). The patches of all images run as ONE sequence
([1, n_patches, d]); attention stays within each image frame (and, in Qwen2.5-VL's windowed
blocks, within each window) through segment ids, so the patches keep their input order in every
hook (HF reorders them window by window in Qwen2.5-VL; the numbers are the same).
2-D axial rotary positions (row, col of each patch) are applied to q and k in every block.

Settings in ``VisionConfig.extra``: temporal_patch_size, spatial_merge_size, rope_theta,
window_size (None = no windows), fullatt_block_indexes (blocks that attend over whole images).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import VisionConfig
from ..hook_points import HookPoint
from .block import TransformerBlock
from .fused_qkv import FusedQKVAttention
from .masks import AttentionMask


def patch_positions(grid_thw: torch.Tensor, merge: int) -> torch.Tensor:
    """(row, col) of every patch in the processor's merge-block-major order: [n_patches, 2]."""
    out = []
    for t, h, w in grid_thw.tolist():
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        shape = (h // merge, merge, w // merge, merge)
        rows = rows.reshape(shape).transpose(1, 2).flatten()
        cols = cols.reshape(shape).transpose(1, 2).flatten()
        out.append(torch.stack([rows, cols], dim=-1).repeat(t, 1))
    return torch.cat(out, dim=0)


def segment_ids(grid_thw: torch.Tensor, merge: int, window: int | None) -> torch.Tensor:
    """Segment id of every patch [n_patches]: one per image frame, or per window of ``window`` merged cells."""
    out, next_id = [], 0
    for t, h, w in grid_thw.tolist():
        lh, lw = h // merge, w // merge
        if window is None:
            ids = torch.arange(t)[:, None].expand(t, h * w)
            n_ids = t
        else:  # window of each merged cell (r, c), then the merge * merge patches of that cell
            r = torch.arange(lh)[:, None].expand(lh, lw) // window
            c = torch.arange(lw)[None, :].expand(lh, lw) // window
            per_frame = (r * (lw // window + 1) + c).flatten()
            n_per_frame = int(per_frame.max()) + 1
            ids = (per_frame[None, :] + n_per_frame * torch.arange(t)[:, None]).repeat_interleave(merge * merge, dim=1)
            n_ids = t * n_per_frame
        out.append(ids.flatten() + next_id)
        next_id += n_ids
    return torch.cat(out)


class QwenVisionTower(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        t, x = cfg.tower, cfg.extra
        self.temporal_patch_size = x["temporal_patch_size"]
        self.merge = x["spatial_merge_size"]
        self.window = None if x.get("window_size") is None else x["window_size"] // self.merge // cfg.patch_size
        self.full_blocks = set(x.get("fullatt_block_indexes", range(t.n_layers)))
        kernel = (self.temporal_patch_size, cfg.patch_size, cfg.patch_size)
        self.patch_embed = nn.Conv3d(cfg.n_channels, t.d_model, kernel, kernel, bias=cfg.patch_bias)
        self.blocks = nn.ModuleList([TransformerBlock(t) for _ in range(t.n_layers)])
        for block in self.blocks:
            block.attn = FusedQKVAttention(t)
        self._theta = float(x.get("rope_theta", 10000.0))
        self.register_buffer("inv_freq", torch.empty(t.d_head // 4), persistent=False)
        self.reset_buffers()
        self.hook_embed = HookPoint()  # [1, n_patches, d_vision] (patch embeddings of all images, packed)

    def reset_buffers(self) -> None:
        """(Re)compute the axial rotary frequencies; called after a model built on 'meta' is materialised."""
        half = self.cfg.tower.d_head // 2
        inv_freq = 1.0 / (self._theta ** (torch.arange(0, half, 2, dtype=torch.float) / half))
        if self.inv_freq.device.type != "meta":
            self.inv_freq = inv_freq.to(self.inv_freq.device)

    def rotary(self, grid_thw: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [1, n_patches, 1, d_head]: first half of the pairs follows the row, second half the column."""
        pos = patch_positions(grid_thw.cpu(), self.merge).to(self.inv_freq.device)
        freqs = (pos[..., None].float() * self.inv_freq.float()).flatten(1)  # [n, 2 * d_head // 4] (rows, cols)
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos().to(dtype)[None, :, None], emb.sin().to(dtype)[None, :, None]

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """pixel_values [n_patches, C * tp * p * p], grid_thw [n_images, 3] -> last hidden state [1, n_patches, d]."""
        cfg = self.cfg
        w = self.patch_embed.weight
        x = pixel_values.to(w.dtype).view(-1, cfg.n_channels, self.temporal_patch_size, cfg.patch_size, cfg.patch_size)
        x = self.hook_embed(self.patch_embed(x).view(1, -1, cfg.tower.d_model))
        n = x.shape[1]
        rotary = self.rotary(grid_thw, x.dtype)
        grid_cpu = grid_thw.cpu()
        positions = torch.arange(n, device=x.device)
        full = AttentionMask(causal=False, key_padding=None, query_positions=positions, k_len=n,
                             segment_ids=segment_ids(grid_cpu, self.merge, None)[None].to(x.device))
        windowed = full
        if self.window is not None:
            windowed = AttentionMask(causal=False, key_padding=None, query_positions=positions, k_len=n,
                                     segment_ids=segment_ids(grid_cpu, self.merge, self.window)[None].to(x.device))
        for l, block in enumerate(self.blocks):
            x = block(x, full if l in self.full_blocks else windowed, rotary)
        return x  # read it at projector.hook_in
