"""Span selection at the core: names, derived roles, masks, positions and the rows a hook sees.

Used by the model's SAE splice, the analyses (:mod:`hooked_vlm.analysis` re-exports every public name) and the
views alike; it imports nothing above the core.

A *span* argument may be a span name of :class:`~hooked_vlm.spans.TokenSpans` (``"image"``,
``"eoi"``, ``"text"``, ``"last"``, ``"image.0"`` ...), one of the derived names below, a bool
tensor [batch, pos], a list of absolute positions (the same in every batch item), or a function
``spans -> bool [batch, pos]``. Derived names (computed from the spans, so they work on every
family and stay right while generating, when the spans grow):

* ``all``           every real (non-padding) position
* ``image_region``  every position that is not text and not padding (image tokens and markers)
* ``image_last``    the last image-content token of each image; ``image_first`` the first
* ``image_other``   image-content tokens that are not ``image_last``
* ``image_end``     where each image ends: the ``eoi`` marker on families that have one (Chameleon, Emu3, Janus, Qwen-VL,
  Pixtral, ...), else ``image_last`` (LLaVA); the default span of patching and steering, so it exists on every model
* ``after_image``   text positions after the last image-region position (the paper's
  "text after EOI"); ``before_image`` text positions before the first one
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, Union

import torch
from jaxtyping import Bool
from torch import Tensor

from .spans import TokenSpans

SpanLike = Union[str, Tensor, Sequence[int], Callable[[TokenSpans], Tensor]]
"""What every analysis accepts as a span: a name (``"image"``, ``"eoi"``, ``"image.0"``, a derived name of
``DERIVED``) or a list of names (their union), a bool mask ``[batch, pos]`` of the forward it is used in, a list of
positions, or ``fn(spans) -> mask``."""

DERIVED = ("all", "image_region", "image_last", "image_first", "image_other", "image_end", "after_image",
           "before_image", "generated")
"""Span names computed from a forward's spans rather than read from them: ``image_end`` is the ``eoi`` marker where
the family has one, else the last image token; ``image_region`` the image tokens and their markers; ``generated``
the positions generation added."""


def _image_ends(spans: TokenSpans, last: bool) -> Tensor:
    out = torch.zeros_like(spans.mask("image"))
    b_len = spans.seq_len
    ar = torch.arange(b_len, device=out.device)
    for name in spans.names:
        if name.startswith("image.") and name[6:].isdigit():
            m = spans.masks[name]
            if last:
                idx = torch.where(m, ar, -1).max(1).values
            else:
                idx = torch.where(m, ar, b_len).min(1).values
            has = m.any(1)
            rows = torch.arange(out.shape[0], device=out.device)[has]
            out[rows, idx[has]] = True
    return out


def image_region_mask(spans: TokenSpans) -> Bool[Tensor, "batch pos"]:
    """Image tokens and structural markers (boi, eoi, row breaks, family extras): not text, not padding."""
    return ~spans.mask("text") & ~spans.mask("pad")


def span_mask(spans: TokenSpans, span: SpanLike) -> Bool[Tensor, "batch pos"]:
    """Bool [batch, pos] of the positions ``span`` selects (see the module docstring)."""
    if callable(span) and not isinstance(span, Tensor):
        return span_mask(spans, span(spans))
    if isinstance(span, Tensor):
        if span.dtype != torch.bool:
            span = _positions_mask(spans, span.tolist())
        if span.ndim == 1:
            span = span[None].expand(spans.batch, -1)
        if tuple(span.shape) != (spans.batch, spans.seq_len):
            raise ValueError(_mask_shape_error(spans, tuple(span.shape)))
        return span.to(spans.grid.device)
    if not isinstance(span, str):
        span = list(span)
        if span and all(isinstance(s, str) for s in span):  # a union of spans, e.g. ["end_of_frame", "eoi"]
            out = span_mask(spans, span[0]).clone()
            for s in span[1:]:
                out |= span_mask(spans, s)
            return out
        return _positions_mask(spans, span)
    if span in spans:
        return spans.mask(span)
    real = ~spans.mask("pad")
    if span == "generated":  # present in the spans once generation has started
        return torch.zeros_like(real)
    if span == "all":
        return real
    if span == "image_region":
        return image_region_mask(spans)
    if span == "image_last":
        return _image_ends(spans, last=True)
    if span == "image_first":
        return _image_ends(spans, last=False)
    if span == "image_end":
        return spans.mask("eoi") if "eoi" in spans else _image_ends(spans, last=True)
    if span == "image_other":
        return spans.mask("image") & ~_image_ends(spans, last=True)
    if span in ("after_image", "before_image"):
        region = image_region_mask(spans)
        ar = torch.arange(spans.seq_len, device=region.device).expand_as(region)
        if span == "after_image":
            bound = torch.where(region, ar, -1).max(1, keepdim=True).values
            return spans.mask("text") & (ar > bound) & region.any(1, keepdim=True)
        bound = torch.where(region, ar, spans.seq_len).min(1, keepdim=True).values
        return spans.mask("text") & (ar < bound) & region.any(1, keepdim=True)
    raise KeyError(f"no span named {span!r}; spans of this input: {', '.join(spans.names)}; derived: {', '.join(DERIVED)}")


def _n_generated(spans: TokenSpans) -> int:
    return int(spans.mask("generated")[0].sum()) if "generated" in spans and spans.batch else 0


def _mask_shape_error(spans: TokenSpans, shape: tuple) -> str:
    msg = (f"span mask has shape {shape}; this forward's sequence is [batch, pos] = {(spans.batch, spans.seq_len)}. "
           "Build masks from this input's spans (cache.spans / hook.spans, e.g. grid_cells_mask(cache.spans, ...)), "
           "not from model.to_tokens(text): prepare_inputs expands each image placeholder into the image's tokens.")
    n_new = _n_generated(spans)
    if n_new:
        msg += (f" While generating, the sequence is the prompt ({spans.seq_len - n_new} positions) + {n_new} generated: "
                "pass a prompt mask as span=prompt_span(mask) (hooked_vlm.analysis; the generated positions are not "
                "in it, or are with generated=True), and name the new positions with the span 'generated'.")
    return msg


def prompt_span(mask: Tensor, generated: bool = False) -> Callable[[TokenSpans], Tensor]:
    """A span for hooks that stay active in ``model.generate``: ``mask`` ([batch, prompt_pos] or [prompt_pos] bool,
    e.g. from ``cache.spans`` of the prompt) over the prompt, and the generated positions out (``generated=False``)
    or in (``generated=True``). The mask must cover exactly the prompt: a mask of any other length raises."""
    mask = torch.as_tensor(mask)
    if mask.dtype != torch.bool:
        raise TypeError(f"prompt_span takes a bool mask [batch, prompt_pos], got dtype {mask.dtype}")

    def over_prompt(spans: TokenSpans) -> Tensor:
        m = mask[None].expand(spans.batch, -1) if mask.ndim == 1 else mask
        n_new = _n_generated(spans)
        if m.ndim != 2 or tuple(m.shape) != (spans.batch, spans.seq_len - n_new):
            raise ValueError(f"prompt_span: the mask has shape {tuple(mask.shape)} but the prompt is [batch, pos] = "
                             f"{(spans.batch, spans.seq_len - n_new)} ({n_new} generated positions follow it); build "
                             "it from the prompt's spans (cache.spans of the same inputs)")
        new = torch.full((spans.batch, n_new), generated, dtype=torch.bool, device=m.device)
        return torch.cat([m, new], 1).to(spans.grid.device)

    return over_prompt


def _positions_mask(spans: TokenSpans, positions: list) -> Tensor:
    m = torch.zeros(spans.batch, spans.seq_len, dtype=torch.bool, device=spans.grid.device)
    pos = torch.as_tensor(positions, dtype=torch.long).flatten()
    bad = pos[(pos >= spans.seq_len) | (pos < -spans.seq_len)].tolist()
    if bad:
        raise IndexError(f"span positions {bad[:8]} are out of range: the sequence has {spans.seq_len} positions "
                         f"(valid: 0..{spans.seq_len - 1}, or -{spans.seq_len}..-1 from the end)")
    m[:, pos] = True
    return m


def query_rows(hook: Any, span: SpanLike, act: Tensor | None = None) -> Bool[Tensor, "batch q_pos"]:
    """Inside a hook: which of the rows computed now (``hook.query_positions``) belong to ``span``.

    ``act`` (optional) is checked to be laid out [batch, pos, ...] like the language model's stream, and the
    mask comes back on its device.
    """
    if act is not None and (act.ndim < 3 or act.shape[1] != len(hook.query_positions)):
        raise ValueError(
            f"'{hook.name}' gives shape {tuple(act.shape)}, not [batch, pos, ...] over the sequence; span edits "
            "need a language-model activation (e.g. hook_embed instead of hook_image_embeds)"
        )
    rows = span_mask(hook.spans, span)[:, hook.query_positions]
    # under a device map the spans live on the main device and ``act`` on its block's device
    return rows if act is None else rows.to(act.device)


def grid_cells_mask(spans: TokenSpans, cells: Sequence[tuple[int, int]], image: int = 0, batch: int = 0,
                    buffer: int = 0, tile: int | None = None) -> Bool[Tensor, "batch pos"]:
    """Image positions whose patch (row, col) is within ``buffer`` cells (Chebyshev) of one of ``cells``.

    This is Neo et al.'s "object tokens + buffer" from a list of grid cells (e.g. the cells
    overlapping a segmentation mask).
    """
    g = spans.grid[batch]
    sel = g[:, 0] == image
    if tile is not None:
        sel &= g[:, 1] == tile
    out = torch.zeros(spans.batch, spans.seq_len, dtype=torch.bool, device=g.device)
    for r, c in cells:
        near = sel & ((g[:, 2] - r).abs() <= buffer) & ((g[:, 3] - c).abs() <= buffer) & (g[:, 2] >= 0)
        out[batch] |= near
    return out


def spans_of(model: Any, inputs: Any) -> TokenSpans:
    """The spans a forward on ``inputs`` will see (without running the language model)."""
    inputs = dict(inputs)
    tokens, mask = inputs["input_ids"].to(model.device), inputs.get("attention_mask")
    layouts = model._layouts_without_encoding(inputs)
    return model.spans_for(tokens, None if mask is None else mask.to(model.device), layouts)


def gather_rows(act: Tensor, rows: Tensor) -> Tensor:
    """``act[b, rows[b]]`` per batch item, stacked [batch, max_n, ...]; shorter items padded with NaN."""
    n = rows.sum(1)
    out = act.new_full((act.shape[0], int(n.max()) if len(n) else 0, *act.shape[2:]), float("nan"))
    for b in range(act.shape[0]):
        out[b, : int(n[b])] = act[b, rows[b]]
    return out


def random_span(spans: TokenSpans, n: int, within: SpanLike = "image", seed: int = 0) -> Bool[Tensor, "batch pos"]:
    """``n`` random positions of ``within`` per batch item (the papers' random-token controls)."""
    g = torch.Generator().manual_seed(seed)
    base = span_mask(spans, within)
    out = torch.zeros_like(base)
    for b in range(base.shape[0]):
        pos = base[b].nonzero().flatten()
        out[b, pos[torch.randperm(len(pos), generator=g)[:n].to(pos.device)]] = True
    return out
