"""Attention flow: how text after the image reads the image region, per layer (and head).

The Narrow Gate paper's measure (PAPERS.md A.2): post-softmax weights, rows = text positions
after the image region (``after_image``: after EOI where the family has one), columns = the
image region (image tokens and markers, up to and including EOI); mean over the query rows, sum
over heads, mean over the dataset, then renormalised so the key roles sum to 1.

Key roles are disjoint, first listed wins. Default: ``eoi`` (if the family has it),
``image_last`` (last image-content token), every other marker span of the region (``boi``,
``row_break``, family extras) and ``image_other`` (all other image tokens). Any span (e.g.
``"before_image"``, ``"text"``) may be listed; the shares are renormalised over the listed roles.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor

from ._common import SpanLike, forward_with_hooks, image_region_mask, span_mask
from .layer_kinds import attention_layers
from ..spans import TokenSpans

_NOT_MARKERS = {"image", "text", "pad", "last", "generated"}


def default_key_roles(spans: TokenSpans) -> list[str]:
    """``eoi``, ``image_last``, the other marker spans of the image region, ``image_other``."""
    roles = ["eoi"] if "eoi" in spans else []
    roles.append("image_last")
    region = image_region_mask(spans)
    for name in spans.names:
        if name in _NOT_MARKERS or name == "eoi" or name.startswith("image."):
            continue
        if bool((spans.mask(name) & region).any()):
            roles.append(name)
    roles.append("image_other")
    return roles


def role_masks(spans: TokenSpans, roles: Sequence[SpanLike]) -> Tensor:
    """Disjoint bool [role, batch, pos] masks, first listed role wins."""
    taken = torch.zeros(spans.batch, spans.seq_len, dtype=torch.bool, device=spans.grid.device)
    out = []
    for r in roles:
        m = span_mask(spans, r) & ~taken
        taken |= m
        out.append(m)
    return torch.stack(out)


def flow_hook(store: dict, layer: int, query_span: SpanLike, roles: Sequence[SpanLike] | None) -> Callable:
    """Hook for ``blocks.{layer}.attn.hook_pattern`` writing ``store[layer]`` = [batch, head, role]:
    attention mass from ``query_span`` rows (mean over rows) to each key role."""

    def record_flow(pattern: Tensor, hook: Any) -> None:
        spans = hook.spans
        names = roles if roles is not None else default_key_roles(spans)
        store.setdefault("roles", [r if isinstance(r, str) else f"role{i}" for i, r in enumerate(names)])
        q = span_mask(spans, query_span)[:, hook.query_positions].to(pattern.dtype)  # [batch, q]
        n_q = q.sum(1)
        per_key = torch.einsum("bhqk,bq->bhk", pattern, q) / n_q.clamp(min=1)[:, None, None]  # [batch, head, k]
        keys = role_masks(spans, names)[:, :, : pattern.shape[-1]].to(pattern.dtype)  # [role, batch, k]
        mass = torch.einsum("bhk,rbk->bhr", per_key, keys)
        mass[n_q == 0] = float("nan")  # items without text after the image
        store[layer] = mass.float().cpu()

    return record_flow


@torch.no_grad()
def attention_flow_frame(model: Any, inputs: dict, query_span: SpanLike = "after_image",
                         keys: Sequence[SpanLike] | None = None, layers: Sequence[int] | None = None,
                         per_head: bool = False) -> Any:
    """Per-example raw attention mass: tidy DataFrame (batch, layer, head, role, weight).

    ``head`` is -1 for the sum over heads (``per_head=False``). Hybrid models: attention layers only;
    ``frame.attrs["skipped_layers"]`` {layer: kind} lists the others (naming one raises)."""
    import pandas as pd

    layers, skipped = attention_layers(model, layers, "attention_flow")
    store: dict = {}
    forward_with_hooks(model, inputs, [(f"blocks.{l}.attn.hook_pattern", flow_hook(store, l, query_span, keys))
                                       for l in layers], return_type=None)
    rows = []
    for l in layers:
        mass = store[l]  # [batch, head, role]
        if not per_head:
            mass = mass.sum(1, keepdim=True)
        b, h, r = mass.shape
        for bi in range(b):
            for hi in range(h):
                for ri, role in enumerate(store["roles"]):
                    rows.append((bi, l, hi if per_head else -1, role, float(mass[bi, hi, ri])))
    frame = pd.DataFrame(rows, columns=["batch", "layer", "head", "role", "weight"])
    frame.attrs["skipped_layers"] = skipped
    return frame


def attention_flow(model: Any, data: dict | Iterable[Any], *, query_span: SpanLike = "after_image",
                   keys: Sequence[SpanLike] | None = None, layers: Sequence[int] | None = None, per_head: bool = False,
                   batch_size: int = 8, progress: bool = True) -> Any:
    """Mean over the dataset of the attention mass per (layer, head, role), and its share.

    ``data``: one batch of inputs (a dict) or a dataset (see :mod:`.runner`). Returns a DataFrame
    with columns layer, head, role, weight (mean raw mass), share (renormalised over the roles of
    each layer/head: the paper's plotted quantity), n (examples averaged).
    """
    from .runner import run_dataset

    fn = lambda m, inp: attention_flow_frame(m, inp, query_span, keys, layers, per_head)
    _, skipped = attention_layers(model, layers, "attention_flow")
    if isinstance(data, dict):
        per_example = fn(model, data).rename(columns={"batch": "example"})
    else:
        per_example = run_dataset(model, data, fn, batch_size=batch_size, progress=progress, desc="attention flow")
    out = summarise_flow(per_example)
    out.attrs["skipped_layers"] = skipped  # layers without attention (hybrid models): not in the result
    return out


def summarise_flow(per_example: Any) -> Any:
    """Mean over examples (NaN rows skipped) and renormalised shares, from :func:`attention_flow_frame` rows."""
    g = per_example.dropna(subset=["weight"]).groupby(["layer", "head", "role"], sort=False)
    out = g["weight"].agg(["mean", "count"]).reset_index().rename(columns={"mean": "weight", "count": "n"})
    out["share"] = out["weight"] / out.groupby(["layer", "head"])["weight"].transform("sum")
    from .frames import AttentionFlowFrame  # a DataFrame that displays as an interactive plot in notebooks (pandas: lazily)

    return AttentionFlowFrame(out[["layer", "head", "role", "weight", "share", "n"]])


def plot_attention_flow(flow: Any, head: int = -1, ax: Any = None, roles: Sequence[str] | None = None) -> Any:
    """Stacked bars of the role shares per layer (one head, or -1 = sum over heads)."""
    import matplotlib.pyplot as plt

    df = flow[flow["head"] == head].pivot(index="layer", columns="role", values="share")
    df = df[[r for r in (roles or list(dict.fromkeys(flow["role"]))) if r in df.columns]]
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4, 0.35 * len(df) + 2), 3))
    bottom = None
    for role in df.columns:
        ax.bar(df.index, df[role], bottom=bottom, label=role)
        bottom = df[role] if bottom is None else bottom + df[role]
    ax.set_xlabel("layer")
    ax.set_ylabel("share of text -> image attention")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper right")
    return ax.figure
