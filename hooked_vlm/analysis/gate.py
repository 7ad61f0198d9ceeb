"""Gate finder: which position of the image region carries the image to the text?

Each candidate is a position of the image region (image tokens and markers such as ``boi`` /
``eoi`` / row breaks), named by its offset from the region's first position so that it lines
up across examples. Two scores, averaged over the dataset:

* ``attention_share``: the attention it receives from text after the image (per layer: mean
  over query rows, summed over heads; then averaged over ``layers``), renormalised so the
  candidates sum to 1 (the quantity of :mod:`.attention_flow`, per position instead of per role);
* ``knockout_kl`` / ``knockout_tv``: how much the next-token distribution at ``last`` changes
  (KL(clean || knocked out), total variation) when that one key is masked for every text query
  after the image in ``knockout_layers`` (``mask`` knockout, :mod:`.knockout`).

The gate has a high attention share and a large knockout effect (EOI in Chameleon/Emu3).

Hybrid models (docs/hybrid_models.md): both scores use the attention layers only (``layers`` /
``knockout_layers`` None = every attention layer; naming a linear / conv layer raises); the result's
``attrs["skipped_layers"]`` {layer: kind} lists the layers neither score looked at.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
from torch import Tensor

from ._common import SpanLike, forward_with_hooks, image_region_mask, span_mask
from .layer_kinds import attention_layers
from .knockout import knockout_hooks
from .patching import last_logits


def _region_start(spans: Any) -> Tensor:
    region = image_region_mask(spans)
    ar = torch.arange(spans.seq_len, device=region.device).expand_as(region)
    return torch.where(region, ar, spans.seq_len).min(1).values  # [batch]; seq_len when no image


def candidate_span(offset: int) -> Any:
    """A span selecting, in every batch item, the region position at ``offset`` (if inside the region)."""

    def at_offset(spans: Any) -> Tensor:
        start = _region_start(spans)
        m = torch.zeros(spans.batch, spans.seq_len, dtype=torch.bool, device=start.device)
        pos = start + offset
        ok = pos < spans.seq_len
        m[torch.arange(spans.batch, device=start.device)[ok], pos[ok]] = True
        return m & image_region_mask(spans)

    at_offset.__name__ = f"region_offset_{offset}"
    return at_offset


def _role_of(spans: Any, b: int, p: int) -> str:
    for name in ("eoi", "boi", "row_break"):
        if name in spans and bool(spans.mask(name)[b, p]):
            return name
    if bool(span_mask(spans, "image_last")[b, p]):
        return "image_last"
    if bool(spans.mask("image")[b, p]):
        return "image"
    others = [n for n in spans.names if not n.startswith("image") and n not in ("text", "pad", "last") and bool(spans.mask(n)[b, p])]
    return others[0] if others else "other"


@torch.no_grad()
def gate_frame(model: Any, inputs: dict, *, query_span: SpanLike = "after_image", layers: Sequence[int] | None = None,
               knockout_layers: Sequence[int] | None = None, offsets: Sequence[int] | None = None) -> Any:
    """Per-example scores of every region offset: DataFrame (batch, offset, role, row, col,
    attention, knockout_kl, knockout_tv). ``offsets=[]`` skips the knockouts."""
    import pandas as pd

    layers, skipped = attention_layers(model, layers, "find_gate (attention share)")
    knockout_layers, skipped_ko = attention_layers(model, knockout_layers, "find_gate (knockout)")
    store: dict[str, Any] = {}

    def received(pattern: Tensor, hook: Any) -> None:
        spans = hook.spans
        q = span_mask(spans, query_span)[:, hook.query_positions].to(pattern.dtype)
        per_key = torch.einsum("bhqk,bq->bk", pattern, q) / q.sum(1).clamp(min=1)[:, None]
        store["spans"] = spans
        store["att"] = store.get("att", 0) + per_key.float() / len(layers)

    clean = forward_with_hooks(model, inputs, [(f"blocks.{l}.attn.hook_pattern", received) for l in layers])
    spans = store["spans"]
    p_clean = last_logits(clean, spans).float().log_softmax(-1)
    start = _region_start(spans)
    region = image_region_mask(spans)
    n_region = int(region.sum(1).max())
    offsets = list(range(n_region)) if offsets is None else list(offsets)
    effects: dict[int, tuple[Tensor, Tensor]] = {}
    for off in offsets:
        hooks = knockout_hooks(model, candidate_span(off), query_span, knockout_layers, mode="mask")
        p_ko = last_logits(forward_with_hooks(model, inputs, hooks), spans).float().log_softmax(-1)
        kl = (p_clean.exp() * (p_clean - p_ko)).sum(-1)
        tv = 0.5 * (p_clean.exp() - p_ko.exp()).abs().sum(-1)
        effects[off] = (kl, tv)
    rows = []
    for b in range(spans.batch):
        has_q = bool(span_mask(spans, query_span)[b].any())
        for off in range(int(region[b].sum())):
            p = int(start[b]) + off
            if not bool(region[b, p]):
                continue
            _, _, r, c = spans.grid[b, p].tolist()
            kl, tv = effects.get(off, (None, None))
            rows.append(dict(batch=b, offset=off, position=p, role=_role_of(spans, b, p), row=r, col=c,
                             attention=float(store["att"][b, p]) if has_q else float("nan"),
                             knockout_kl=float(kl[b]) if kl is not None else float("nan"),
                             knockout_tv=float(tv[b]) if tv is not None else float("nan")))
    frame = pd.DataFrame(rows)
    frame.attrs["skipped_layers"] = {**skipped, **skipped_ko}
    return frame


def find_gate(model: Any, data: dict | Iterable[Any], *, query_span: SpanLike = "after_image",
              layers: Sequence[int] | None = None, knockout_layers: Sequence[int] | None = None,
              knockout_top: int | None = None, batch_size: int = 8, progress: bool = True) -> Any:
    """Rank the region positions by attention share from text and by knockout effect.

    ``knockout_top=k`` knocks out only the k positions with the largest attention share plus every
    marker (two passes over ``data``, which must then be re-iterable); None knocks out all.
    Returns a DataFrame sorted by attention share: offset, role, row, col, attention_share,
    knockout_kl, knockout_tv, attention_rank, knockout_rank, n.
    """
    from .runner import run_dataset

    def run(offsets: Sequence[int] | None) -> Any:
        fn = lambda m, inp: gate_frame(m, inp, query_span=query_span, layers=layers, knockout_layers=knockout_layers,
                                       offsets=offsets)
        if isinstance(data, dict):
            return fn(model, data).rename(columns={"batch": "example"})
        return run_dataset(model, data, fn, batch_size=batch_size, progress=progress, desc="gate")

    if knockout_top is None:
        per_example = run(None)
    else:
        first = run([])
        summary = _summarise(first)
        keep = set(summary.nlargest(knockout_top, "attention_share")["offset"]) | set(
            summary.loc[~summary.role.isin(["image", "image_last"]), "offset"])
        per_example = run(sorted(int(o) for o in keep))
    out = _summarise(per_example)
    out.attrs["skipped_layers"] = {**attention_layers(model, layers, "find_gate")[1],
                                   **attention_layers(model, knockout_layers, "find_gate")[1]}
    return out


def _summarise(per_example: Any) -> Any:
    g = per_example.groupby("offset")
    out = g.agg(role=("role", lambda r: r.mode().iloc[0]), row=("row", "first"), col=("col", "first"),
                attention=("attention", "mean"), knockout_kl=("knockout_kl", "mean"),
                knockout_tv=("knockout_tv", "mean"), n=("role", "size")).reset_index()
    out["attention_share"] = out["attention"] / out["attention"].sum()
    out["attention_rank"] = out["attention_share"].rank(ascending=False, method="min")
    out["knockout_rank"] = out["knockout_kl"].rank(ascending=False, method="min")
    out = out.drop(columns="attention").sort_values("attention_share", ascending=False)
    return out.reset_index(drop=True)[["offset", "role", "row", "col", "attention_share", "knockout_kl", "knockout_tv",
                                       "attention_rank", "knockout_rank", "n"]]
