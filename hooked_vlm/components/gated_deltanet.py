"""Gated DeltaNet: the linear-attention token mixer of ``linear_attention`` layers (Qwen3.5, Qwen3-Next).

    x -> in_proj_qkv -> causal depthwise conv (kernel ``conv_kernel``) -> act -> q | k | v
    x -> in_proj_b -> sigmoid = beta (write strength);  x -> in_proj_a -> g = -exp(A_log) * softplus(a + dt_bias)
    gated delta rule over (q, k, v, g, beta) from the layer's recurrent state (components/delta_rule.py) -> z
    x -> in_proj_z = gate;  RMSNorm(z) * w * silu(gate) -> out_proj

Hooks (shape comments below): the conv input, q / k / v after the conv and its activation (before the l2 norm the
delta rule applies), beta, g, the output gate, the recurrent state at the end of the forward, the delta-rule output
and the gated-norm output. ``hook_state``'s return value is the state the KV cache keeps, so editing it changes every
later position of a continuation; without a cache it still fires with the final state of the forward.

Left padding: the input is multiplied by the current positions' key-padding mask (HF's
``apply_mask_to_padding_states``), so padded positions write nothing and a left-padded row equals the row alone.
A prompt (or any forward of more than one position, or one without a state) runs the chunked algorithm, one new
position with a state the step-by-step one, as HF's torch path does; the two agree to float32 rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import ACT2FN

from ..config import TowerConfig
from ..hook_points import HookPoint
from .delta_rule import chunk_gated_delta_rule, recurrent_gated_delta_rule
from .masks import AttentionMask


class RecurrentState:
    """A linear-attention layer's state in the KV cache; constant size, it does not grow with the tokens."""

    def __init__(self) -> None:
        self.conv: torch.Tensor | None = None  # [batch, conv_dim, conv_kernel - 1]: the last conv inputs
        self.recurrent: torch.Tensor | None = None  # [batch, head, d_k, d_v] float32

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.conv, self.recurrent) if t is not None)


class GatedRMSNorm(nn.Module):
    """HF's RMSNormGated: float32 RMS norm over d_value, times w (not 1 + w), times silu(gate) in float32."""

    def __init__(self, d: int, eps: float):
        super().__init__()
        self.w = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        h = self.w * h.to(dtype)
        return (h * F.silu(gate.to(torch.float32))).to(dtype)


class GatedDeltaNet(nn.Module):
    def __init__(self, cfg: TowerConfig):
        super().__init__()
        la = cfg.linear_attention
        if la is None:
            raise ValueError("a linear_attention layer needs TowerConfig.linear_attention (a LinearAttentionConfig)")
        self.la = la
        d = cfg.d_model
        self.key_dim, self.value_dim = la.n_key_heads * la.d_key, la.n_value_heads * la.d_value
        self.in_proj_qkv = nn.Linear(d, la.conv_dim, bias=False)  # weight [q|k|v, d_model]
        self.in_proj_z = nn.Linear(d, self.value_dim, bias=False)
        self.in_proj_b = nn.Linear(d, la.n_value_heads, bias=False)
        self.in_proj_a = nn.Linear(d, la.n_value_heads, bias=False)
        self.conv1d = nn.Conv1d(la.conv_dim, la.conv_dim, la.conv_kernel, groups=la.conv_dim, bias=False)  # [c, 1, k]
        self.dt_bias = nn.Parameter(torch.ones(la.n_value_heads))
        self.A_log = nn.Parameter(torch.zeros(la.n_value_heads))
        self.norm = GatedRMSNorm(la.d_value, la.norm_eps)
        self.out_proj = nn.Linear(self.value_dim, d, bias=False)
        self.act = ACT2FN[la.act_fn]

        self.hook_conv_in = HookPoint()  # [batch, pos, conv_dim]  q|k|v projection before the causal conv
        self.hook_q = HookPoint()  # [batch, pos, k_head, d_k]  after the conv + activation, before the l2 norm
        self.hook_k = HookPoint()  # [batch, pos, k_head, d_k]
        self.hook_v = HookPoint()  # [batch, pos, head, d_v]
        self.hook_beta = HookPoint()  # [batch, pos, head]  write strength in (0, 1); 0 = the position writes nothing
        self.hook_g = HookPoint()  # [batch, pos, head]  log decay (<= 0) of the state at each step, float32
        self.hook_gate = HookPoint()  # [batch, pos, head, d_v]  output gate before silu (in_proj_z)
        self.hook_state = HookPoint()  # [batch, head, d_k, d_v]  recurrent state after the last position, float32
        self.hook_z = HookPoint()  # [batch, pos, head, d_v]  delta-rule output, before the gated norm
        self.hook_normed = HookPoint()  # [batch, pos, head, d_v]  gated RMSNorm output, before out_proj

    @property
    def b_O(self) -> torch.Tensor:  # out_proj has no bias (TransformerLens accumulated_bias reads it)
        return torch.zeros(self.out_proj.out_features, device=self.out_proj.weight.device, dtype=self.out_proj.weight.dtype)

    def forward(
        self,
        x: torch.Tensor,  # [batch, pos, d_model]
        mask: AttentionMask,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,  # unused: no positions beyond the conv's order
        state: RecurrentState | None = None,
    ) -> torch.Tensor:
        la = self.la
        b, n, _ = x.shape
        if mask.key_padding is not None:  # padded positions write nothing (HF: apply_mask_to_padding_states)
            x = x * mask.key_padding[:, -n:, None].to(x.device, x.dtype)
        qkv = self.hook_conv_in(self.in_proj_qkv(x)).transpose(1, 2)  # [batch, conv_dim, pos]
        qkv = self.act(self._conv(qkv, state)).transpose(1, 2)  # [batch, pos, conv_dim]
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        q = self.hook_q(q.reshape(b, n, la.n_key_heads, la.d_key))
        k = self.hook_k(k.reshape(b, n, la.n_key_heads, la.d_key))
        v = self.hook_v(v.reshape(b, n, la.n_value_heads, la.d_value))
        gate = self.hook_gate(self.in_proj_z(x).reshape(b, n, la.n_value_heads, la.d_value))
        beta = self.hook_beta(self.in_proj_b(x).sigmoid())
        g = self.hook_g(-self.A_log.float().exp() * F.softplus(self.in_proj_a(x).float() + self.dt_bias))
        initial = state.recurrent if state is not None else None
        if initial is not None and n == 1:
            z, final = recurrent_gated_delta_rule(q, k, v, g, beta, initial)
        else:
            z, final = chunk_gated_delta_rule(q, k, v, g, beta, initial, la.chunk_size)
        final = self.hook_state(final)
        if state is not None:
            state.recurrent = final
        z = self.hook_z(z)
        normed = self.hook_normed(self.norm(z, gate))
        return self.out_proj(normed.reshape(b, n, self.value_dim))

    def _conv(self, qkv: torch.Tensor, state: RecurrentState | None) -> torch.Tensor:
        """Causal depthwise conv of qkv [batch, conv_dim, pos] after the cached window (zeros at the start)."""
        keep = self.la.conv_kernel - 1
        window = state.conv if state is not None and state.conv is not None \
            else qkv.new_zeros(qkv.shape[0], qkv.shape[1], keep)
        full = torch.cat([window.to(qkv.dtype), qkv], dim=-1)
        if state is not None:
            state.conv = full[..., full.shape[-1] - keep:]
        return F.conv1d(full, self.conv1d.weight, None, groups=full.shape[1])
