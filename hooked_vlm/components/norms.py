"""RMSNorm and LayerNorm with TransformerLens hook semantics.

``hook_scale`` is the norm's divisor [batch, pos, 1], exactly as TL defines it, so
``ActivationCache.apply_ln_to_stack`` can reuse it. ``hook_normalized`` is the norm's OUTPUT,
weight (and bias) included: what the next matrix reads, and what HF reports as the final
hidden state. (TL's norms put the weight after the hook, or fold it into the next matrix;
``hooked_vlm.tl_cache`` applies it in ``apply_ln_to_stack``, so TL's cache recipes stay exact.)
"""

from __future__ import annotations

import torch
from torch import nn

from ..hook_points import HookPoint


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float, weight_offset: float = 0.0):
        super().__init__()
        self.w = nn.Parameter(torch.ones(d))
        self.eps = eps
        self.weight_offset = weight_offset  # Gemma-style (1 + w) when 1.0
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        scale = self.hook_scale(torch.sqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps))
        if self.weight_offset:  # Gemma: (x * (offset + w)) in float32, then cast (HF Gemma3RMSNorm's order)
            return self.hook_normalized(((x32 / scale) * (self.w.float() + self.weight_offset)).to(dtype))
        return self.hook_normalized(self.w * (x32 / scale).to(dtype))


class LayerNorm(nn.Module):
    """LayerNorm over the last dimension; ``center=False`` makes it an RMSNorm with a float32 weight
    (the q/k norms of :mod:`.qk_norm`). ``shape`` may be ``(head, d_head)`` for a per-head weight."""

    def __init__(self, shape: int | tuple[int, ...], eps: float, bias: bool = True, center: bool = True,
                 weight_offset: float = 0.0):
        super().__init__()
        self.weight_offset = weight_offset  # the weight applied is (offset + w) (Gemma's q/k norms: 1.0)
        self.w = nn.Parameter(torch.ones(shape))
        self.b = nn.Parameter(torch.zeros(shape)) if bias else None
        self.eps = eps
        self.center = center
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        if self.center:
            x32 = x32 - x32.mean(-1, keepdim=True)
        scale = self.hook_scale(torch.sqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps))
        w = self.w.float()
        out = (x32 / scale) * (w + self.weight_offset if self.weight_offset else w)
        if self.b is not None:
            out = out + self.b.float()
        return self.hook_normalized(out.to(dtype))


class UnitRMSNorm(nn.Module):
    """RMSNorm without a weight (Gemma 4's value norm, router norm and image-embedding norm): x / rms(x), float32."""

    def __init__(self, eps: float):
        super().__init__()
        self.eps = eps
        self.hook_scale = HookPoint()  # [..., 1]
        self.hook_normalized = HookPoint()  # same shape as the input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        scale = self.hook_scale(torch.sqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps))
        return self.hook_normalized((x32 / scale).to(x.dtype))


def make_norm(kind: str, d: int, eps: float, offset: float = 0.0, bias: bool = True) -> nn.Module:
    """``bias=False`` with "LN": a LayerNorm without bias (Cohere's LayerNorm: mean-centred, weight only, float32)."""
    if kind == "RMS":
        return RMSNorm(d, eps, offset)
    if offset:
        raise ValueError(f"norm_offset={offset} is only supported for RMS norms, not {kind!r}")
    if kind == "LN":
        return LayerNorm(d, eps, bias=bias)
    raise ValueError(f"unknown normalization_type {kind!r}; expected 'RMS' or 'LN'")
