"""Per-head q/k normalisation (config-gated by ``TowerConfig.qk_norm``).

Each head's query / key vector is normalised over ``d_head`` (LayerNorm or RMSNorm), with a weight
shared by all heads ([d_head]) or one per head ([head, d_head], ``qk_norm_per_head``: Chameleon,
whose model-parallel shards each kept their own q/k norm). Applied after ``hook_q`` / ``hook_k``
and before rotary embeddings; read the result at ``attn.q_norm.hook_normalized``. With ``qk_norm_scope="all"`` (InternViT-6B) one norm spans all heads of q (of k).
"""

from __future__ import annotations

import einops
import torch

from ..config import TowerConfig
from ..hook_points import HookPoint
from .norms import LayerNorm


class HeadNorm(LayerNorm):
    """LayerNorm ("LN") or RMSNorm ("RMS") of each head's vector over d_head, weights in float32."""

    def __init__(self, kind: str, n_heads: int, d_head: int, eps: float, per_head: bool, offset: float = 0.0,
                 bias: bool = True):  # bias=False: a LayerNorm without bias (Cohere's q/k norms; cfg.norm_bias)
        if kind not in ("LN", "RMS"):
            raise ValueError(f"qk_norm must be 'LN' or 'RMS', got {kind!r}")
        shape = (n_heads, d_head) if per_head else (d_head,)
        super().__init__(shape, eps, bias=kind == "LN" and bias, center=kind == "LN", weight_offset=offset)
        self.kind = kind
        self.hook_scale = HookPoint()  # [batch, pos, head, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, head, d_head]


def make_qk_norms(cfg: TowerConfig) -> tuple[HeadNorm | None, HeadNorm | None]:
    """(q_norm, k_norm) for a tower, or (None, None) when ``cfg.qk_norm`` is unset."""
    if cfg.qk_norm is None:
        return None, None
    eps = cfg.norm_eps if cfg.qk_norm_eps is None else cfg.qk_norm_eps
    offset = cfg.norm_offset if cfg.qk_norm == "RMS" else 0.0  # Gemma 3: RMS q/k norms with (1 + w), like its other norms
    if cfg.qk_norm_scope == "all":  # one norm over the whole projection [n_heads * d_head] (InternViT-6B)
        return (AllHeadsNorm(cfg.qk_norm, cfg.n_heads * cfg.d_head, eps, offset),
                AllHeadsNorm(cfg.qk_norm, cfg.n_key_value_heads * cfg.d_head, eps, offset))
    return (HeadNorm(cfg.qk_norm, cfg.n_heads, cfg.d_head, eps, cfg.qk_norm_per_head, offset, cfg.norm_bias),
            HeadNorm(cfg.qk_norm, cfg.n_key_value_heads, cfg.d_head, eps, cfg.qk_norm_per_head, offset, cfg.norm_bias))


class AllHeadsNorm(LayerNorm):
    """LayerNorm ("LN") or RMSNorm ("RMS") of the concatenated heads ([head, d_head] flattened), weights in float32;
    takes and returns [batch, pos, head, d_head] (``qk_norm_scope="all"``)."""

    def __init__(self, kind: str, d: int, eps: float, offset: float = 0.0):
        if kind not in ("LN", "RMS"):
            raise ValueError(f"qk_norm must be 'LN' or 'RMS', got {kind!r}")
        super().__init__(d, eps, bias=kind == "LN", center=kind == "LN", weight_offset=offset)
        self.kind = kind
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, head * d_head]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(einops.rearrange(x, "b p h d -> b p (h d)")).view_as(x)
