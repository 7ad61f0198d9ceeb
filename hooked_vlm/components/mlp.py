"""Feed-forward blocks: gated (SwiGLU-style) and plain two-layer MLPs."""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import ACT2FN

from ..hook_points import HookPoint
from .fused_qkv import RowSlice


class MLP(nn.Module):
    """``down(act(gate(x)) * up(x))`` when gated, else ``down(act(up(x)))``."""

    def __init__(self, d_model: int, d_mlp: int, act_fn: str, gated: bool, bias: bool, out_bias: bool | None = None,
                 d_out: int | None = None, fused_gate_up: bool = False):
        # d_out: output width when it is not d_model (Idefics2's modality MLP); fused_gate_up: gate and up are the two
        # row halves of one Linear ``gate_up_proj`` [2 * d_mlp, d_model] (gate rows first; GLM-4's checkpoint layout)
        super().__init__()
        self.gated = gated
        if fused_gate_up:
            if not gated:
                raise ValueError("fused_gate_up needs a gated MLP (gate and up halves of one matrix)")
            self.gate_up_proj = nn.Linear(d_model, 2 * d_mlp, bias=bias)  # weight [2 * d_mlp, d_model]
            self.gate_proj = RowSlice(self.gate_up_proj, 0, d_mlp)
            self.up_proj = RowSlice(self.gate_up_proj, d_mlp, 2 * d_mlp)
        else:
            self.gate_proj = nn.Linear(d_model, d_mlp, bias=bias) if gated else None
            self.up_proj = nn.Linear(d_model, d_mlp, bias=bias)  # weight [d_mlp, d_model]
        self.down_proj = nn.Linear(d_mlp, d_model if d_out is None else d_out, bias=bias if out_bias is None else out_bias)
        self.act = ACT2FN[act_fn]
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp] (pre-activation; the gate branch when gated)
        self.hook_pre_linear = HookPoint() if gated else None  # [batch, pos, d_mlp] (the up branch)
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]

    # TransformerLens views
    @property
    def W_in(self) -> torch.Tensor:  # [d_model, d_mlp]
        return self.up_proj.weight.T

    @property
    def W_gate(self) -> torch.Tensor | None:  # [d_model, d_mlp]
        return None if self.gate_proj is None else self.gate_proj.weight.T

    @property
    def W_out(self) -> torch.Tensor:  # [d_mlp, d_model]
        return self.down_proj.weight.T

    @property
    def b_out(self) -> torch.Tensor:
        b = self.down_proj.bias
        return b if b is not None else torch.zeros(self.down_proj.out_features, device=self.down_proj.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            pre = self.hook_pre(self.gate_proj(x))
            post = self.hook_post(self.act(pre) * self.hook_pre_linear(self.up_proj(x)))
        else:
            post = self.hook_post(self.act(self.hook_pre(self.up_proj(x))))
        return self.down_proj(post)
