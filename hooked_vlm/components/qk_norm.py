"""Per-head q/k normalisation (config-gated by ``TowerConfig.qk_norm``).

Each head's query / key vector is normalised over ``d_head`` (LayerNorm or RMSNorm), with a weight
shared by all heads ([d_head]) or one per head ([head, d_head], ``qk_norm_per_head``: Chameleon,
whose model-parallel shards each kept their own q/k norm). Applied after ``hook_q`` / ``hook_k``
and before rotary embeddings; read the result at ``attn.q_norm.hook_normalized``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import TowerConfig
from ..hook_points import HookPoint


class HeadNorm(nn.Module):
    def __init__(self, kind: str, n_heads: int, d_head: int, eps: float, per_head: bool):
        super().__init__()
        if kind not in ("LN", "RMS"):
            raise ValueError(f"qk_norm must be 'LN' or 'RMS', got {kind!r}")
        shape = (n_heads, d_head) if per_head else (d_head,)
        self.kind = kind
        self.eps = eps
        self.w = nn.Parameter(torch.ones(shape))
        self.b = nn.Parameter(torch.zeros(shape)) if kind == "LN" else None
        self.hook_scale = HookPoint()  # [batch, pos, head, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, head, d_head]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [batch, pos, head, d_head]
        dtype = x.dtype
        x32 = x.float()
        if self.kind == "LN":
            x32 = x32 - x32.mean(-1, keepdim=True)
        scale = self.hook_scale(torch.sqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps))
        out = (x32 / scale) * self.w.float()
        if self.b is not None:
            out = out + self.b.float()
        return self.hook_normalized(out.to(dtype))


def make_qk_norms(cfg: TowerConfig) -> tuple[HeadNorm | None, HeadNorm | None]:
    """(q_norm, k_norm) for a tower, or (None, None) when ``cfg.qk_norm`` is unset."""
    if cfg.qk_norm is None:
        return None, None
    eps = cfg.norm_eps if cfg.qk_norm_eps is None else cfg.qk_norm_eps
    return (HeadNorm(cfg.qk_norm, cfg.n_heads, cfg.d_head, eps, cfg.qk_norm_per_head),
            HeadNorm(cfg.qk_norm, cfg.n_key_value_heads, cfg.d_head, eps, cfg.qk_norm_per_head))
