"""Span ablation: zero, mean or resample the activation of any span at any hook.

Default site: the language model's input, ``hook_embed``, at the image positions (the projector
output spliced into the sequence), as in Neo et al. The hook works on every [batch, pos, ...]
activation (residual stream, ``ln1.hook_normalized``, ``attn.hook_z`` ...). While generating,
the hook fires on the new rows only (``hook.query_positions``), and those are text, so an image
ablation applies to the prompt pass exactly as in the paper.

* ``how="zero"``: the activation becomes 0.
* ``how="mean"``: it becomes ``value`` ([d] one mean vector, e.g. from :func:`mean_activation`,
  or [n_span, d] one vector per span position, in span order).
* ``how="resample"``: it becomes ``value`` taken from another input's run at the same span
  (:func:`span_activations` of the source), [n_span, d] for batch 1 or [batch, n_span, d].
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from jaxtyping import Float
from torch import Tensor

from ._common import SpanLike, forward_with_hooks, gather_rows, query_rows, span_mask


def ablation_hook(span: SpanLike = "image", how: str = "zero", value: Tensor | None = None) -> Callable:
    """A hook ``fn(activation [batch, pos, ...], hook)`` replacing ``span`` rows (see module doc)."""
    if how not in ("zero", "mean", "resample"):
        raise ValueError(f"how must be 'zero', 'mean' or 'resample', got {how!r}")
    if how != "zero" and value is None:
        raise ValueError(f"how={how!r} needs value= (mean_activation(...) or span_activations(...) of a source run)")

    def ablate(act: Tensor, hook: Any) -> Tensor:
        rows = query_rows(hook, span, act)  # [batch, q]
        if not rows.any():
            return act
        out = act.clone()
        if how == "zero":
            out[rows] = 0
            return out
        v = value.to(act.device, act.dtype)
        if v.ndim == act.ndim - 2:  # one vector for every position
            out[rows] = v
            return out
        if v.ndim == act.ndim - 1:  # per span position, same for every batch item
            v = v[None].expand(act.shape[0], *v.shape)
        full = span_mask(hook.spans, span)  # rank of each query row within the span of its item
        rank = full.long().cumsum(1) - 1
        r = rank[:, hook.query_positions]
        b_idx, q_idx = rows.nonzero(as_tuple=True)
        r = r[b_idx, q_idx]
        if bool((r >= v.shape[1]).any()):
            raise ValueError(f"'{hook.name}': the span has more positions than the {v.shape[1]} values given")
        vals = v[b_idx, r]
        if vals.is_floating_point() and bool(vals.isnan().any()):
            raise ValueError(f"'{hook.name}': the source span is shorter than the target span in some batch item")
        out[b_idx, q_idx] = vals
        return out

    return ablate


def span_ablation(model: Any, inputs: dict, span: SpanLike = "image", how: str = "mean", value: Tensor | None = None,
                  hook_name: str = "hook_embed") -> Tensor:
    """Logits of ``inputs`` with ``span`` ablated at ``hook_name`` (default: LM input at image tokens)."""
    from .cross_attention import refuse_image_positions

    if hook_name == "hook_embed":
        refuse_image_positions(model, span, "span ablation at hook_embed", "key_ablation(model, inputs, keys=...)")
    return forward_with_hooks(model, inputs, [(hook_name, ablation_hook(span, how, value))])


@torch.no_grad()
def span_activations(model: Any, inputs: dict, span: SpanLike = "image", hook_name: str = "hook_embed") -> Tensor:
    """Activation of ``span`` at ``hook_name``: [batch, n_span, ...] (shorter spans padded with NaN)."""
    got: dict[str, Tensor] = {}

    def grab(act: Tensor, hook: Any) -> None:
        got["act"] = gather_rows(act, query_rows(hook, span, act))

    forward_with_hooks(model, inputs, [(hook_name, grab)], return_type=None)
    return got["act"]


@torch.no_grad()
def mean_activation(model: Any, dataset: Iterable[dict] | Iterable[Any], span: SpanLike = "image",
                    hook_name: str = "hook_embed", per_position: bool = False, batch_size: int = 8,
                    progress: bool = True) -> Float[Tensor, "... d"]:
    """Mean activation of ``span`` at ``hook_name`` over a dataset (prepared input dicts or
    (image, prompt) pairs, see :mod:`hooked_vlm.analysis.runner`).

    ``per_position=False``: one vector [d] averaged over every span token of every item (Neo et
    al.'s mean projector output); ``True``: one vector per span position [n_span, d] (all items
    must have the same span length). Stops the forward at the hook when it can (``hook_embed``).
    """
    from .runner import iterate_batches

    total: Tensor | None = None
    count: Tensor | float = 0.0

    def accumulate(act: Tensor, hook: Any) -> None:
        nonlocal total, count
        rows = query_rows(hook, span, act)
        if per_position:
            n = rows.sum(1)
            if not bool((n == n[0]).all()):
                raise ValueError(f"per_position=True needs the same span length in every item, got {n.tolist()}")
            s = act[rows].reshape(act.shape[0], int(n[0]), *act.shape[2:]).double().sum(0)
            c = act.shape[0]
        else:
            s, c = act[rows].double().sum(0), int(rows.sum())
        total = s if total is None else total + s
        count = count + c

    stop = 0 if hook_name == "hook_embed" else None
    for _, inputs in iterate_batches(model, dataset, batch_size=batch_size, progress=progress, desc="mean activation"):
        forward_with_hooks(model, inputs, [(hook_name, accumulate)], return_type=None, stop_at_layer=stop)
    if total is None or not count:
        raise ValueError("the dataset gave no positions of the span")
    return (total / count).to(model.dtype)


@torch.no_grad()
def high_norm_span(model: Any, inputs: dict, span: SpanLike = "image", hook_name: str = "hook_embed",
                   n_sd: float = 2.0) -> Tensor:
    """Bool [batch, pos]: positions of ``span`` whose activation norm exceeds mean + ``n_sd`` sd
    (per batch item): Neo et al.'s "register" tokens."""
    from ._common import spans_of

    act = span_activations(model, inputs, span, hook_name).float().norm(dim=-1)  # [batch, n] (NaN padded)
    mask = span_mask(spans_of(model, inputs), span)
    out = torch.zeros_like(mask)
    for b in range(act.shape[0]):
        norms = act[b][~act[b].isnan()]
        pos = mask[b].nonzero().flatten()
        out[b, pos[norms > norms.mean() + n_sd * norms.std()]] = True
    return out
