"""Attention knockout: stop queries in one span from reading keys in another, in chosen layers/heads.

Two modes (both persist through ``model.generate``: the spans grow with the generated tokens,
which are ``text`` and ``generated``, so new queries are blocked too):

* ``"mask"``: the edge gets -inf before the softmax (the rest of the row renormalises). It is a
  hook on ``blocks.{l}.attn.hook_mask`` (bool [batch, 1 or head, q, k], True = may attend), so
  it runs on the fast SDPA path: no [q, k] float matrix is built, only the bool mask.
* ``"zero"``: the post-softmax weight is set to 0 *without* renormalising (the Narrow Gate
  paper's variant). It is a hook on ``blocks.{l}.attn.hook_pattern`` (explicit attention path).

``src`` is the span whose *keys* are blocked (where information comes from), ``dst`` the span
whose *queries* are blocked (where it would go): ``knockout_hooks(src="image", dst="text")``
blocks every image -> text edge.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from jaxtyping import Bool
from torch import Tensor

from ._common import SpanLike, forward_with_hooks, layer_list, span_mask


def blocked_edges(hook: Any, src: SpanLike, dst: SpanLike, k_len: int) -> Bool[Tensor, "batch 1 q_pos k_pos"]:
    """Inside an attention hook: True at (query row, key) edges from ``src`` keys to ``dst`` queries."""
    spans = hook.spans
    q = span_mask(spans, dst)[:, hook.query_positions]  # [batch, q]
    k = span_mask(spans, src)[:, :k_len]  # [batch, k]
    return q[:, None, :, None] & k[:, None, None, :]


class _EdgeCache:
    """Reuses the blocked-edge mask across the layers of one forward (same spans object, same rows)."""

    def __init__(self, src: SpanLike, dst: SpanLike):
        self.src, self.dst = src, dst
        self.spans: Any = None
        self.key: tuple = ()
        self.blocked: Tensor | None = None
        self.keep: Tensor | None = None  # ~blocked

    def __call__(self, hook: Any, k_len: int) -> Tensor:
        qp = hook.query_positions
        key = (int(qp[0]) if len(qp) else -1, len(qp), k_len)
        if self.spans is not hook.spans or self.key != key:
            self.spans, self.key = hook.spans, key
            self.blocked = blocked_edges(hook, self.src, self.dst, k_len)
            self.keep = ~self.blocked
        return self.blocked


def _head_select(n_heads: int, heads: Sequence[int] | None, device: torch.device) -> Tensor | None:
    if heads is None:
        return None
    sel = torch.zeros(n_heads, dtype=torch.bool, device=device)
    sel[torch.as_tensor(list(heads), dtype=torch.long, device=device)] = True
    return sel[None, :, None, None]  # [1, head, 1, 1]


def mask_knockout_hook(src: SpanLike, dst: SpanLike, heads: Sequence[int] | None = None,
                       n_heads: int | None = None) -> Callable:
    """Hook for ``blocks.{l}.attn.hook_mask``: forbid ``src`` keys to ``dst`` queries (-inf before softmax)."""
    if heads is not None and n_heads is None:
        raise ValueError("knocking out single heads needs n_heads (model.cfg.n_heads)")
    edges = _EdgeCache(src, dst)

    def knockout_mask(allowed: Tensor, hook: Any) -> Tensor:
        blocked = edges(hook, allowed.shape[-1])
        sel = _head_select(n_heads or 1, heads, allowed.device)
        if sel is None:
            return allowed & edges.keep
        allowed = allowed.expand(-1, n_heads, -1, -1)
        return allowed & ~(blocked & sel)  # [batch, head, q, k]

    return knockout_mask


def zero_knockout_hook(src: SpanLike, dst: SpanLike, heads: Sequence[int] | None = None) -> Callable:
    """Hook for ``blocks.{l}.attn.hook_pattern``: set ``src`` -> ``dst`` weights to 0, no renormalisation."""
    edges = _EdgeCache(src, dst)

    def knockout_pattern(pattern: Tensor, hook: Any) -> Tensor:
        blocked = edges(hook, pattern.shape[-1])
        sel = _head_select(pattern.shape[1], heads, pattern.device)
        if sel is not None:
            blocked = blocked & sel
        return pattern.masked_fill(blocked, 0.0)

    return knockout_pattern


def knockout_hooks(model: Any, src: SpanLike = "image", dst: SpanLike = "text", layers: Sequence[int] | int | None = None,
                   heads: Sequence[int] | None = None, mode: str = "mask") -> list[tuple[str, Callable]]:
    """(hook name, hook fn) pairs knocking out ``src`` -> ``dst`` attention in ``layers`` (default all)."""
    from .cross_attention import refuse_image_positions

    refuse_image_positions(model, src, "attention knockout", "cross_attention_knockout(model, inputs, keys=...)")
    if mode == "mask":
        fn = mask_knockout_hook(src, dst, heads, model.cfg.n_heads)
        return [(f"blocks.{l}.attn.hook_mask", fn) for l in layer_list(model, layers)]
    if mode == "zero":
        fn = zero_knockout_hook(src, dst, heads)
        return [(f"blocks.{l}.attn.hook_pattern", fn) for l in layer_list(model, layers)]
    raise ValueError(f"mode must be 'mask' or 'zero', got {mode!r}")


def attention_knockout(model: Any, inputs: dict, src: SpanLike = "image", dst: SpanLike = "text",
                       layers: Sequence[int] | int | None = None, heads: Sequence[int] | None = None,
                       mode: str = "mask") -> Tensor:
    """Logits of ``inputs`` with ``src`` -> ``dst`` attention knocked out (see :func:`knockout_hooks`)."""
    return forward_with_hooks(model, inputs, knockout_hooks(model, src, dst, layers, heads, mode))


def knockout_generate(model: Any, inputs: dict, src: SpanLike = "image", dst: SpanLike = "text",
                      layers: Sequence[int] | int | None = None, heads: Sequence[int] | None = None,
                      mode: str = "mask", **generate_kwargs: Any) -> Any:
    """``model.generate`` with the knockout active on the prompt and on every generated token."""
    return model.generate(**dict(inputs), fwd_hooks=knockout_hooks(model, src, dst, layers, heads, mode), **generate_kwargs)


def layer_windows(n_layers: int, size: int, stride: int | None = None) -> list[list[int]]:
    """Consecutive layer windows (Neo et al. use ~10-layer windows; the Narrow Gate's progressive
    variant is ``[list(range(n - k, n)) for k in (8, 16, ...)]``): windows of ``size`` layers starting
    every ``stride`` layers (default ``size``), the last one cut at ``n_layers``; they stop at the first
    window that reaches the last layer. With ``stride > size`` the windows leave gaps."""
    stride = size if stride is None else stride
    if size < 1 or stride < 1:
        raise ValueError(f"layer_windows needs size and stride >= 1, got size={size}, stride={stride}")
    windows = []
    for s in range(0, n_layers, stride):
        windows.append(list(range(s, min(s + size, n_layers))))
        if s + size >= n_layers:  # this window reaches the last layer
            break
    return windows
