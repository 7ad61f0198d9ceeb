"""Interactive attention view: per layer and head, a query's attention over the image (drawn on it) and over
the text tokens; a grid of every head of the layer; clicking a text token makes it the query.

The patterns are read at ``blocks.{l}.attn.hook_pattern`` (post-softmax) for the rows of ``queries`` only and
stored as uint8 scaled by each (layer, query, head) row's maximum (relative resolution 1/255 of that maximum),
so the file holds layers x queries x heads x positions bytes (x 4/3 for base64): e.g. 32 layers x 20 text
queries x 32 heads x 650 positions = 13 MB. Pass ``layers=`` / ``queries=`` to keep big models' files small.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import torch

from ..analysis._common import forward_with_hooks, layer_list
from ..span_select import SpanLike, span_mask, spans_of
from .document import View, image_data_url, pack_bytes, pack_floats
from .lens import position_labels

LARGE_BYTES = 64_000_000  # warn above this size (browsers open it, but slowly)


@torch.no_grad()
def attention_view(model: Any, inputs: dict, layers: Sequence[int] | int | None = None, query: SpanLike = "last", *,
                   queries: SpanLike = "text", image: Any = None, batch: int = 0, image_index: int = 0, tile: int = 0,
                   title: str | None = None) -> View:
    """View of the attention of ``query`` (a span: its last position is the first query shown) at ``layers``
    (default every layer); every position of ``queries`` (default the text tokens) can be clicked to become
    the query. ``image``: the picture as the model saw it (PIL or array)."""
    spans = spans_of(model, inputs)
    layers = layer_list(model, layers)
    q_mask = span_mask(spans, queries)[batch] | span_mask(spans, query)[batch]
    first = span_mask(spans, query)[batch].nonzero().flatten()
    if len(first) == 0:
        raise ValueError(f"query={query!r} selects no position of batch item {batch}")
    q_pos = q_mask.nonzero().flatten()
    n_bytes = len(layers) * len(q_pos) * model.cfg.n_heads * spans.seq_len * 4 // 3
    if n_bytes > LARGE_BYTES:
        warnings.warn(f"the attention view will be ~{n_bytes / 1e6:.0f} MB ({len(layers)} layers x {len(q_pos)} queries x "
                      f"{model.cfg.n_heads} heads x {spans.seq_len} positions); pass layers= or queries= (e.g. "
                      "queries='after_image') for a smaller file", stacklevel=2)
    store: dict[int, torch.Tensor] = {}

    def record(layer: int):
        def record_pattern(pattern: torch.Tensor, hook: Any) -> None:
            store[layer] = pattern[batch][:, q_pos.to(pattern.device)].float().cpu()  # [head, query, key]
        return record_pattern

    forward_with_hooks(model, inputs, [(f"blocks.{l}.attn.hook_pattern", record(l)) for l in layers], return_type=None)
    pat = torch.stack([store[l].transpose(0, 1) for l in layers]).numpy()  # [layer, query, head, key]
    row_max = pat.max(-1)  # [layer, query, head]
    quant = np.rint(pat / np.where(row_max > 0, row_max, 1.0)[..., None] * 255)

    g = spans.grid[batch].cpu()
    on_image = (g[:, 0] == image_index) & (g[:, 1] == tile) & (g[:, 2] >= 0)
    grid = {"rows": int(g[on_image, 2].max()) + 1, "cols": int(g[on_image, 3].max()) + 1} if bool(on_image.any()) else None
    cells = [[int(g[p, 2]), int(g[p, 3])] if bool(on_image[p]) else None for p in range(spans.seq_len)]
    labels, roles = position_labels(spans, batch, inputs["input_ids"], getattr(model, "tokenizer", None))
    data = {
        "layers": layers, "n_heads": int(pat.shape[2]), "queries": q_pos.tolist(), "first_query": int(first[-1]),
        "seq_len": spans.seq_len, "pattern": pack_bytes(quant), "row_max": pack_floats(row_max), "labels": labels,
        "roles": roles, "cells": cells, "grid": grid, "image": image_data_url(image),
    }
    return View("attention", data, title or f"attention of a query over the image and the text, per layer and head",
                height=820)
