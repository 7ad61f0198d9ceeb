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

Hybrid models (Qwen3.5's Gated DeltaNet, LFM2's short convolutions: docs/hybrid_models.md): those layers have no
attention edges. ``linear="skip"`` (default): with ``layers=None`` the knockout acts on the attention layers only,
and the returned hook list says so (``.acted_on`` {layer: what}, ``.skipped`` {layer: kind}); naming such a layer
raises. ``linear="remove_source"``: on those layers the ``src`` positions' input to the mixer is zeroed (the layer
treats them as padding), which blocks ``src`` from EVERY later position through that layer -- ``dst`` cannot be
selective there, a recurrent state has no per-query edges; ``heads`` cannot be given with it.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from jaxtyping import Bool
from torch import Tensor

from ._common import SpanLike, forward_with_hooks, span_mask
from .layer_kinds import check_source_removal, source_removal_hook, split_layers


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


class KnockoutHooks(list):
    """The (hook name, hook fn) pairs of a knockout, plus which layers it acts on and how (``acted_on``
    {layer: "attention mask" | "attention pattern" | "source removal"}) and which it skipped (``skipped`` {layer:
    layer kind}: layers without attention under ``linear="skip"``)."""

    acted_on: dict[int, str]
    skipped: dict[int, str]


def knockout_hooks(model: Any, src: SpanLike = "image", dst: SpanLike = "text", layers: Sequence[int] | int | None = None,
                   heads: Sequence[int] | None = None, mode: str = "mask",
                   linear: str = "skip") -> KnockoutHooks:
    """(hook name, hook fn) pairs knocking out ``src`` -> ``dst`` attention in ``layers`` (default all attention
    layers); ``linear``: what happens on layers without attention (module docstring)."""
    if mode not in ("mask", "zero"):
        raise ValueError(f"mode must be 'mask' or 'zero', got {mode!r}")
    if linear not in ("skip", "remove_source"):
        raise ValueError(f"linear must be 'skip' or 'remove_source', got {linear!r}")
    attention, other = split_layers(model, layers)
    if other and linear == "skip" and layers is not None:
        listing = ", ".join(f"layer {l} is a {kind!r} layer" for l, kind in other.items())
        raise ValueError(f"attention knockout: {listing}, with no attention edges to knock out. Pass "
                         "linear='remove_source' (the src positions' input to that layer zeroed: blocks src from every "
                         "later position through it; docs/hybrid_models.md) or name attention layers only")
    if other and linear == "remove_source" and heads is not None:
        raise ValueError(f"heads={list(heads)} with linear='remove_source': layers {sorted(other)} "
                         f"({sorted(set(other.values()))}) have no per-head edges to remove")
    out = KnockoutHooks()
    out.acted_on, out.skipped = {}, {}
    if mode == "mask":
        fn = mask_knockout_hook(src, dst, heads, model.cfg.n_heads)
        out += [(f"blocks.{l}.attn.hook_mask", fn) for l in attention]
    else:
        fn = zero_knockout_hook(src, dst, heads)
        out += [(f"blocks.{l}.attn.hook_pattern", fn) for l in attention]
    out.acted_on.update({l: f"attention {mode}" for l in attention})
    if linear == "remove_source":
        removal = source_removal_hook(src)
        out += [(check_source_removal(model, l), removal) for l in other]
        out.acted_on.update({l: "source removal" for l in other})
    else:
        out.skipped.update(other)
    return out


def attention_knockout(model: Any, inputs: dict, src: SpanLike = "image", dst: SpanLike = "text",
                       layers: Sequence[int] | int | None = None, heads: Sequence[int] | None = None,
                       mode: str = "mask", linear: str = "skip") -> Tensor:
    """Logits of ``inputs`` with ``src`` -> ``dst`` attention knocked out (see :func:`knockout_hooks`). The logits
    carry ``.knockout_acted_on`` / ``.knockout_skipped`` (the hook list's ``acted_on`` / ``skipped``)."""
    hooks = knockout_hooks(model, src, dst, layers, heads, mode, linear)
    logits = forward_with_hooks(model, inputs, hooks)
    logits.knockout_acted_on, logits.knockout_skipped = hooks.acted_on, hooks.skipped
    return logits


def knockout_generate(model: Any, inputs: dict, src: SpanLike = "image", dst: SpanLike = "text",
                      layers: Sequence[int] | int | None = None, heads: Sequence[int] | None = None,
                      mode: str = "mask", linear: str = "skip", **generate_kwargs: Any) -> Any:
    """``model.generate`` with the knockout active on the prompt and on every generated token."""
    return model.generate(**dict(inputs), fwd_hooks=knockout_hooks(model, src, dst, layers, heads, mode, linear),
                          **generate_kwargs)


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
