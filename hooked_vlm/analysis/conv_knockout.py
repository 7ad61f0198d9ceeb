"""Knockout on a short-convolution layer (LFM2 ``conv``): remove a source position's term from a destination's conv.

A conv layer mixes positions only inside its causal window: the conv output at position ``t`` is
``sum_j w[:, j] * (b * h)[t - kernel + 1 + j]`` (hooked_vlm/components/short_conv.py). Knocking out ``src -> dst``
in that layer drops exactly the terms whose source position is in ``src`` from every destination in ``dst`` -- the
conv counterpart of attention's edge knockout. There is no softmax, so nothing renormalises: the ``mask`` and
``zero`` modes of :mod:`.knockout` are the same intervention here. A source more than ``kernel - 1`` positions
before a destination has no term to remove (it reaches the destination only through other layers); the hook works
with and without the KV cache (the window of past positions is part of the state the taps read).

It is a hook on ``blocks.{l}.conv.hook_tap_mask`` (bool [batch, pos, kernel], True = tap read).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from ._common import SpanLike, span_mask


def blocked_taps(hook: Any, src: SpanLike, dst: SpanLike, kernel: int) -> Tensor:
    """Inside a ``hook_tap_mask`` hook: True at (query row, tap) whose source is in ``src`` and query in ``dst``."""
    spans, qp = hook.spans, hook.query_positions
    source = qp[:, None] - (kernel - 1) + torch.arange(kernel, device=qp.device)[None, :]  # [q, kernel]
    inside = source >= 0  # taps before position 0 read the conv's zero padding: nothing to remove
    q = span_mask(spans, dst)[:, qp]  # [batch, q]
    k = span_mask(spans, src)[:, source.clamp(min=0)] & inside  # [batch, q, kernel]
    return q[..., None] & k


def conv_knockout_hook(src: SpanLike, dst: SpanLike, kernel: int) -> Callable:
    """Hook for ``blocks.{l}.conv.hook_tap_mask``: drop ``src`` -> ``dst`` terms of the causal conv."""

    def knockout_taps(taps: Tensor, hook: Any) -> Tensor:
        return taps & ~blocked_taps(hook, src, dst, kernel).to(taps.device)

    return knockout_taps
