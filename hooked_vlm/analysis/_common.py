"""Helpers shared by every analysis: index lists, forwards with hooks; span selection re-exported from the core.

Span selection (names, derived roles such as ``image_last`` / ``image_end``, masks, positions, generation's new
positions) lives in :mod:`hooked_vlm.span_select`, below the analysis layer, so the model's SAE splice and the views
use the same code; its names are re-exported here so ``from hooked_vlm.analysis._common import span_mask`` keeps
working.
"""

from __future__ import annotations

from typing import Any

import torch

from ..span_select import (DERIVED, SpanLike, gather_rows, grid_cells_mask, image_region_mask, prompt_span,
                           query_rows, random_span, span_mask, spans_of)

__all__ = ["DERIVED", "SpanLike", "forward_with_hooks", "gather_rows", "grid_cells_mask", "image_region_mask",
           "index_list", "layer_list", "prompt_span", "query_rows", "random_span", "span_mask", "spans_of"]


def index_list(what: str, values: Any, n: int) -> list[int]:
    """``None`` -> all of 0..n-1; an int -> [int]; negative indices count from the end; anything outside raises
    naming the valid range (``what``: e.g. "layers", "heads")."""
    if values is None:
        return list(range(n))
    if isinstance(values, int):
        values = [values]
    given = [int(v) for v in values]
    bad = [v for v in given if not -n <= v < n]
    if bad:
        raise ValueError(f"{what} {bad} out of range: this model has {n} {what} (valid: 0..{n - 1}, "
                         f"or -{n}..-1 from the end)")
    return [v + n if v < 0 else v for v in given]


def layer_list(model: Any, layers: Any, n: int | None = None) -> list[int]:
    """``None`` -> every layer; an int -> [int]; negative indices count from the end."""
    return index_list("layers", layers, model.cfg.n_layers if n is None else n)


@torch.no_grad()
def forward_with_hooks(model: Any, inputs: Any, fwd_hooks: list | None = None, return_type: str | None = "logits",
                       **kwargs: Any) -> Any:
    """``model(**inputs)`` with ``fwd_hooks`` active and no autograd graph; inputs is a dict of tensors."""
    with model.hooks(fwd_hooks=fwd_hooks or []):
        return model(**dict(inputs), return_type=return_type, **kwargs)
