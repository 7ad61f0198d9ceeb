"""Attention whose q, k, v projections are one fused matrix in the checkpoint (``qkv``).

:class:`FusedQKVAttention` stores the fused ``qkv`` Linear (so a checkpoint's fused tensor loads
as is) and exposes ``q_proj`` / ``k_proj`` / ``v_proj`` as row slices of it, so everything of
:class:`~hooked_vlm.components.attention.Attention` (hooks, fast/explicit paths, ``W_Q`` views)
works unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TowerConfig
from .attention import Attention


class RowSlice(nn.Module):
    """A Linear made of rows [start, end) of another Linear; owns no parameters."""

    def __init__(self, fused: nn.Linear, start: int, end: int):
        super().__init__()
        self._fused = (fused,)  # a tuple, so the fused module is not registered twice
        self.start, self.end = start, end

    @property
    def weight(self) -> torch.Tensor:  # [end - start, d_in]
        return self._fused[0].weight[self.start : self.end]

    @property
    def bias(self) -> torch.Tensor | None:
        b = self._fused[0].bias
        return None if b is None else b[self.start : self.end]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class FusedQKVAttention(Attention):
    def __init__(self, cfg: TowerConfig, **options: bool):  # options: Attention's use_rope / k_eq_v / shares_kv
        if options.get("k_eq_v") or options.get("shares_kv"):
            raise ValueError("a fused qkv projection with k_eq_v or KV sharing is not implemented")
        super().__init__(cfg, **options)
        q, kv = cfg.n_heads * cfg.d_head, cfg.n_key_value_heads * cfg.d_head
        del self.q_proj, self.k_proj, self.v_proj
        self.qkv = nn.Linear(cfg.d_model, q + 2 * kv, bias=cfg.attn_bias)  # weight [(q k v), d_model]
        self.q_proj = RowSlice(self.qkv, 0, q)
        self.k_proj = RowSlice(self.qkv, q, q + kv)
        self.v_proj = RowSlice(self.qkv, q + kv, q + 2 * kv)
