"""RoPE tables per layer kind (``TowerConfig.layer_rope_parameters``; Gemma 3: local and global layers). A kind with its
own head size (``TowerConfig.layer_d_head``, Gemma 4's global_head_dim) gets a table of that size.

``forward`` returns one (cos, sin) pair per layer, in layer order; layers of one kind share the table. A kind whose
parameters are None is a NoPE kind (Cohere2's full-attention layers): its layers get None, no rotation.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import TowerConfig
from .rope import Rotary


class LayerTypeRotary(nn.Module):
    def __init__(self, cfg: TowerConfig):
        super().__init__()
        self.layer_types = tuple(cfg.layer_types)
        dims = {kind: cfg.rotary_dim or (cfg.layer_d_head or {}).get(kind, cfg.d_head) for kind in self.layer_types}
        self.tables = nn.ModuleDict({kind: Rotary(dims[kind], cfg.layer_rope_parameters[kind], cfg.max_position_embeddings,
                                                  interleaved=cfg.rope_interleaved)
                                     for kind in sorted(set(self.layer_types))
                                     if cfg.layer_rope_parameters.get(kind) is not None})  # no entry: not attention

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
        per_kind = {kind: table(position_ids, dtype) for kind, table in self.tables.items()}
        return [per_kind.get(kind) for kind in self.layer_types]  # None: a NoPE layer, or a mixer without positions


def build_rotary(cfg: TowerConfig) -> nn.Module | None:
    """Rotary (one table), LayerTypeRotary (a table per layer kind) or None for towers without RoPE."""
    if cfg.positional != "rope":
        return None
    if cfg.layer_rope_parameters is not None:
        return LayerTypeRotary(cfg)
    return Rotary(cfg.rotary_dim or cfg.d_head, cfg.rope_parameters, cfg.max_position_embeddings,
                  interleaved=cfg.rope_interleaved)
