"""Attention knockout: stop queries in one span from reading keys in another, in chosen layers/heads.

Two modes (both persist through ``model.generate``: the spans grow with the generated tokens,
which are ``text`` and ``generated``, so new queries are blocked too):

* ``"mask"``: the edge gets -inf before the softmax (the rest of the row renormalises). It is a
  hook on ``blocks.{l}.attn.hook_mask`` (bool [batch, 1 or head, q, k], True = may attend), so
  it runs on the fast SDPA path: no [q, k] float matrix is built, only the bool mask.
* ``"zero"``: the post-softmax weight is set to 0 *without* renormalising (the Narrow Gate
  paper's variant). It is a hook on ``blocks.{l}.attn.hook_pattern`` (explicit attention path).

On a hybrid model (short-convolution layers, ``conv``) the same call knocks out ``src`` -> ``dst`` in the conv layers
too: their ``src`` terms are removed from every ``dst`` position's causal conv (:mod:`.conv_knockout`, exact; see
docs/hybrid_models.md).

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
from .conv_knockout import conv_knockout_hook


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


def _conv_knockout(model: Any, layer: int, src: SpanLike, dst: SpanLike,
                   heads: Sequence[int] | None) -> list[tuple[str, Callable]]:
    if heads is not None:
        raise ValueError(f"heads={list(heads)} selects attention heads, but layer {layer} is a 'conv' layer (a short "
                         "convolution: no heads); pass layers= with attention layers only, or heads=None")
    kernel = model.blocks[layer].conv.kernel
    return [(f"blocks.{layer}.conv.hook_tap_mask", conv_knockout_hook(src, dst, kernel))]


#: layer kind -> (model, layer, src, dst, heads) -> hooks: what a knockout is on mixers without an attention matrix
#: (docs/hybrid_models.md). A kind that is neither attention nor listed here has no knockout: requests raise.
NON_ATTENTION_KNOCKOUTS: dict[str, Callable[..., list[tuple[str, Callable]]]] = {"conv": _conv_knockout}


def knockout_hooks(model: Any, src: SpanLike = "image", dst: SpanLike = "text", layers: Sequence[int] | int | None = None,
                   heads: Sequence[int] | None = None, mode: str = "mask") -> list[tuple[str, Callable]]:
    """(hook name, hook fn) pairs knocking out ``src`` -> ``dst`` in ``layers`` (default all).

    Attention layers: ``attn.hook_mask`` ("mask") or ``attn.hook_pattern`` ("zero"). Short-convolution layers: the
    ``src`` terms of every ``dst`` position's causal conv are removed (``conv.hook_tap_mask``,
    :mod:`.conv_knockout`; both modes are that one intervention: a conv has no softmax to renormalise). The hook
    names say which intervention each layer got."""
    from ..components.mixers import MIXERS
    from ._common import layer_kind_of

    if mode not in ("mask", "zero"):
        raise ValueError(f"mode must be 'mask' or 'zero', got {mode!r}")
    attention_fn = None
    out: list[tuple[str, Callable]] = []
    for l in layer_list(model, layers):
        kind = layer_kind_of(model, l)
        if kind in MIXERS and MIXERS[kind].attention:
            if attention_fn is None:  # one hook object for every attention layer: it reuses its edge mask
                attention_fn = (mask_knockout_hook(src, dst, heads, model.cfg.n_heads) if mode == "mask"
                                else zero_knockout_hook(src, dst, heads))
            out.append((f"blocks.{l}.attn.hook_{'mask' if mode == 'mask' else 'pattern'}", attention_fn))
        elif kind in NON_ATTENTION_KNOCKOUTS:
            out += NON_ATTENTION_KNOCKOUTS[kind](model, l, src, dst, heads)
        else:
            raise ValueError(f"a knockout is not defined on {kind!r} layers (layer {l}): its mixer has no attention "
                             "matrix and no knockout is implemented for it; pass layers= without it")
    return out


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
