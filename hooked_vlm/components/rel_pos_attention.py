"""Encoder self-attention over a square patch grid with decomposed relative positions (SAM's ViT; MViTv2's
decomposition), the token mixer of the ``window_rel_pos_attention`` / ``global_rel_pos_attention`` layer kinds.

The block hands the mixer its normed input ``x`` [batch, grid * grid, d_model] (row-major patches). A windowed layer
zero-pads the grid to a multiple of ``window`` and cuts it into non-overlapping ``window x window`` windows, which
attend separately (HF's ``window_partition``: after the input norm, so padded positions are zero vectors whose keys
are the q/k/v biases); a global layer attends over the whole grid. The output is cut back to the grid, so the block's
residual hooks keep their [batch, grid * grid, d_model] layout. The attention of a window (or of the grid):

    scores = (q * d_head ** -0.5) @ k^T + rel_pos,   rel_pos[qi, kj] = q_i . R_h[r(qi) - r(kj) + size - 1]
                                                                      + q_i . R_w[c(qi) - c(kj) + size - 1]

(``size`` = window or grid; R_h / R_w are ``rel_pos_h`` / ``rel_pos_w`` [2 * size - 1, d_head], the query unscaled),
softmax in float32, z = pattern @ v, then ``proj``. Hooks (``window`` = batch * windows per image on windowed layers,
batch on global ones; ``pos`` the positions of one window):

    hook_q / hook_k / hook_v    [window, pos, head, d_head]   (rel_pos is computed from the hooked q)
    hook_rel_pos                [window, head, q_pos, k_pos]  the additive relative-position term
    hook_attn_scores / hook_pattern  [window, head, q_pos, k_pos]  (explicit path only)
    hook_z                      [window, pos, head, d_head]   what proj reads

Fast path: SDPA with ``rel_pos`` as its additive mask (HF's sdpa implementation); explicit path (any hook on the
scores or the pattern): the formula above. Both give the same numbers. An encoder mixer: it keeps no state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..config import TowerConfig
from ..hook_points import HookPoint


class RelPosAttention(nn.Module):
    def __init__(self, cfg: TowerConfig, windowed: bool):
        super().__init__()
        rp = cfg.rel_pos_attention
        if rp is None:
            raise ValueError("a rel-pos attention layer needs TowerConfig.rel_pos_attention (grid, window)")
        self.n_heads = cfg.n_heads
        self.d_head = cfg.d_head or cfg.d_model // cfg.n_heads
        self.grid = rp.grid
        self.window = rp.window if windowed else None
        self.size = rp.window if windowed else rp.grid  # side of the square each attention call covers
        self.qkv = nn.Linear(cfg.d_model, 3 * self.n_heads * self.d_head, bias=cfg.attn_bias)  # rows: (q|k|v, head, d)
        self.proj = nn.Linear(self.n_heads * self.d_head, cfg.d_model, bias=cfg.attn_out_bias)
        if rp.rel_pos:
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * self.size - 1, self.d_head))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * self.size - 1, self.d_head))
            self.hook_rel_pos = HookPoint()  # [window, head, q_pos, k_pos]  (only with rel_pos: it would never fire)
        else:
            self.rel_pos_h = self.rel_pos_w = None
        self.hook_q = HookPoint()  # [window, pos, head, d_head]
        self.hook_k = HookPoint()  # [window, pos, head, d_head]
        self.hook_v = HookPoint()  # [window, pos, head, d_head]
        self.hook_attn_scores = HookPoint()  # [window, head, q_pos, k_pos]
        self.hook_pattern = HookPoint()  # [window, head, q_pos, k_pos]
        self.hook_z = HookPoint()  # [window, pos, head, d_head]

    def pattern_shape(self, batch: int) -> tuple[int, int, int, int]:
        """The shape of hook_attn_scores / hook_pattern for ``batch`` images: [window, head, q_pos, k_pos]."""
        per_side = 1 if self.window is None else -(-self.grid // self.window)
        return (batch * per_side**2, self.n_heads, self.size**2, self.size**2)

    def _explicit(self) -> bool:
        return bool(self.hook_attn_scores.fwd_hooks or self.hook_pattern.fwd_hooks)

    def forward(self, x: torch.Tensor, mask=None, rotary=None, state=None) -> torch.Tensor:
        """x [batch, grid * grid, d_model] (the block's normed input) -> [batch, grid * grid, d_model]."""
        if state is not None:
            raise ValueError("rel-pos attention is an encoder mixer: it keeps no KV cache state")
        b, n, d = x.shape
        g = self.grid
        if n != g * g:
            raise ValueError(f"rel-pos attention expects {g} x {g} = {g * g} patches per image, got {n}")
        grid = x.view(b, g, g, d)
        if self.window is not None:
            w = self.window
            pad = (w - g % w) % w
            grid = F.pad(grid, (0, 0, 0, pad, 0, pad))
            windows = rearrange(grid, "b (nh h) (nw w) d -> (b nh nw) (h w) d", h=w, w=w)
        else:
            windows = grid.reshape(b, g * g, d)
        out = self._attend(windows)  # [window, pos, d_model]
        if self.window is not None:
            side = g + pad
            out = rearrange(out, "(b nh nw) (h w) d -> b (nh h) (nw w) d", b=b, nh=side // w, h=w, w=w)
            out = out[:, :g, :g]
        return out.reshape(b, g * g, d)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        """One attention per row of x [window, size * size, d_model] -> proj output [window, size * size, d_model]."""
        nw, n, _ = x.shape
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b n h d", three=3, h=self.n_heads)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        qh, kh, vh = (rearrange(t, "b n h d -> b h n d") for t in (q, k, v))
        bias = None
        if self.rel_pos_h is not None:
            bias = self.hook_rel_pos(self._rel_pos(qh))
        if self._explicit():
            scores = (qh * self.d_head**-0.5) @ kh.transpose(-1, -2)
            if bias is not None:
                scores = scores + bias
            scores = self.hook_attn_scores(scores)
            pattern = self.hook_pattern(torch.softmax(scores, dim=-1, dtype=torch.float32).to(qh.dtype))
            z = pattern @ vh
        else:
            z = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=bias)
        z = self.hook_z(rearrange(z, "b h n d -> b n h d"))
        return self.proj(z.reshape(nw, n, -1))

    def _rel_pos(self, q: torch.Tensor) -> torch.Tensor:
        """q [window, head, size * size, d_head] -> the decomposed term [window, head, q_pos, k_pos]."""
        s = self.size
        idx = torch.arange(s, device=q.device)
        rel_index = idx[:, None] - idx[None, :] + s - 1  # [size, size]: q - k, shifted to 0 .. 2 size - 2
        r_h = self.rel_pos_h[rel_index].to(q.dtype)  # [size(q row), size(k row), d_head]
        r_w = self.rel_pos_w[rel_index].to(q.dtype)  # [size(q col), size(k col), d_head]
        qg = q.reshape(*q.shape[:2], s, s, -1)  # [window, head, q row, q col, d_head]
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", qg, r_h)  # [window, head, q row, q col, k row]
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", qg, r_w)  # [window, head, q row, q col, k col]
        bias = rel_h[..., :, None] + rel_w[..., None, :]  # [window, head, q row, q col, k row, k col]
        return bias.reshape(*q.shape[:2], s * s, s * s)
