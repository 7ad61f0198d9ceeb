"""The short-convolution token mixer of LFM2 (``layer_types`` entry ``conv``) and its generation state.

One layer, readable top to bottom (HF ``Lfm2ShortConv``)::

    x = x * key_padding                      # left padding zeroed before anything mixes it in
    b, c, h = in_proj(x).chunk(3)            # hook_b, hook_c, hook_x   [batch, pos, d_model]
    y = causal_depthwise_conv(b * h)         # hook_conv_out            [batch, pos, d_model]
    out = out_proj(c * y)

The convolution is causal and depthwise (one kernel of ``kernel`` taps per channel): position ``t`` reads
``b * h`` at positions ``t - kernel + 1 .. t`` only, so a source can reach a destination through one conv layer
only when it is at most ``kernel - 1`` positions back. ``b * h`` is also zeroed at padded positions, so a left-padded
row computes exactly what the same row computes alone (the conv sees zeros where the row alone sees the conv's own
zero padding) -- also with ``bias`` on, where zeroing only the input (HF's ``apply_mask_to_padding_states``) would
let ``in_proj``'s bias through; without bias the two are the same numbers.

Editing which taps a position reads (``hook_tap_mask``, bool [batch, pos, kernel], True = tap read; tap ``j`` of the
query at absolute position ``t`` reads position ``t - kernel + 1 + j``) removes exactly that source's term from that
destination's conv output (the conv knockout of hooked_vlm/analysis/conv_knockout.py). The mask is built and the conv
computed tap by tap only when a hook is on it; otherwise ``F.conv1d`` runs (the same numbers).

Generation: :class:`ConvState` keeps the last ``kernel - 1`` values of ``b * h`` ``[batch, d_model, kernel - 1]``
(HF keeps ``kernel``; the oldest is never read). Every forward -- the prompt, one new token, or several -- is the
same computation: the window (zeros when empty) is put in front of the new ``b * h`` and the conv runs over it
without padding; the window then becomes the last ``kernel - 1`` columns.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TowerConfig
from ..hook_points import HookPoint
from .masks import AttentionMask


def _tap_mask_ok(new: torch.Tensor, old: torch.Tensor) -> bool:
    return new.dtype == torch.bool and new.shape == old.shape


class ConvState:
    """A short-conv layer's state between forwards: the last ``kernel - 1`` values of ``b * h``."""

    def __init__(self) -> None:
        self.window: torch.Tensor | None = None  # [batch, d_model, kernel - 1]
        self.length = 0  # positions seen

    def advance(self, full: torch.Tensor, n_new: int, kernel: int) -> None:
        """``full`` = [old window ; new b * h] [batch, d_model, kernel - 1 + n_new]."""
        self.window = full[..., full.shape[-1] - (kernel - 1):] if kernel > 1 else full[..., :0]
        self.length += n_new


class ShortConv(nn.Module):
    """LFM2's gated short convolution; parameters ``in_proj`` [3 d_model, d_model], ``conv`` (depthwise, weight
    [d_model, 1, kernel]) and ``out_proj`` [d_model, d_model], biases when ``cfg.short_conv.bias``."""

    def __init__(self, cfg: TowerConfig) -> None:  # cfg.short_conv: a ShortConvConfig
        super().__init__()
        d, sc = cfg.d_model, cfg.short_conv
        self.d_model, self.kernel = d, int(sc.kernel)
        if self.kernel < 1:
            raise ValueError(f"short_conv.kernel must be >= 1, got {sc.kernel}")
        self.in_proj = nn.Linear(d, 3 * d, bias=sc.bias)  # rows: b | c | h
        self.conv = nn.Conv1d(d, d, self.kernel, groups=d, bias=sc.bias)  # weight [d_model, 1, kernel]
        self.out_proj = nn.Linear(d, d, bias=sc.bias)

        self.hook_b = HookPoint()  # [batch, pos, d_model]  input gate (multiplies h before the conv)
        self.hook_c = HookPoint()  # [batch, pos, d_model]  output gate (multiplies the conv output)
        self.hook_x = HookPoint()  # [batch, pos, d_model]  the value stream h that is convolved
        self.hook_tap_mask = HookPoint(_tap_mask_ok, "a bool tap mask [batch, pos, kernel] like")  # [batch, pos, kernel]
        self.hook_conv_out = HookPoint()  # [batch, pos, d_model]  causal depthwise conv of b * h

    @property
    def b_O(self) -> torch.Tensor:  # [d_model] the bias added to every output (TransformerLens's accumulated_bias)
        b = self.out_proj.bias
        return b if b is not None else torch.zeros(self.d_model, device=self.out_proj.weight.device)

    def forward(
        self,
        x: torch.Tensor,  # [batch, pos, d_model] (the normed residual)
        mask: AttentionMask,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,  # unused: a convolution has no positions
        state: ConvState | None = None,
    ) -> torch.Tensor:
        q_len = x.shape[1]
        keep = None
        if mask.key_padding is not None:  # [batch, k_len] True at real tokens; this forward's positions are the last
            keep = mask.key_padding[:, -q_len:].to(device=x.device)[..., None]
            x = x * keep.to(x.dtype)
        b, c, h = self.in_proj(x).chunk(3, dim=-1)
        b, c, h = self.hook_b(b), self.hook_c(c), self.hook_x(h)
        bh = b * h
        if keep is not None:
            bh = bh * keep.to(bh.dtype)
        bh = bh.transpose(1, 2)  # [batch, d_model, pos]
        window = state.window if state is not None and state.window is not None else None
        if window is None:
            window = bh.new_zeros(bh.shape[0], self.d_model, self.kernel - 1)
        full = torch.cat([window.to(bh.dtype), bh], dim=-1)
        if self.hook_tap_mask.fwd_hooks:  # explicit: every tap's term, masked
            taps = self.hook_tap_mask(torch.ones(bh.shape[0], q_len, self.kernel, dtype=torch.bool, device=bh.device))
            terms = full.unfold(-1, self.kernel, 1)  # [batch, d_model, pos, kernel]
            y = torch.einsum("bdqk,dk,bqk->bdq", terms, self.conv.weight[:, 0], taps.to(terms.dtype))
            if self.conv.bias is not None:
                y = y + self.conv.bias[:, None]
        else:
            y = F.conv1d(full, self.conv.weight, self.conv.bias, groups=self.d_model)  # [batch, d_model, pos]
        if state is not None:
            state.advance(full, q_len, self.kernel)
        y = self.hook_conv_out(y.transpose(1, 2))
        return self.out_proj(c * y)
