"""Interactive logit-lens view: the image with its patch grid, per-patch top-k at every layer, a layer
slider colouring the grid by a token's probability or rank, a token search, a vocabulary toggle (text /
image codes, native models) and the prompt as a strip of tokens with their own readouts.

``lens_view(lens, image)`` renders a :class:`~hooked_vlm.analysis.logit_lens.LogitLensResult` (the
``.show()`` / ``.to_html()`` methods call it); :func:`lens_view_for` runs the lens itself over every
position (so the prompt tokens get readouts too) and, for models with image codes, in both vocabularies.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .document import View, image_data_url, pack_ints, pack_probs, pack_u16

LAYER_NOTE = "layer l = the residual stream entering block l (0 = the LM input); the last layer is the model output"


def _token_strings(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    if tokenizer is None:
        return [f"#{i}" for i in ids]
    return [str(t) for t in tokenizer.convert_ids_to_tokens([int(i) for i in ids])]


def position_labels(spans: Any, batch: int, input_ids: Any = None, tokenizer: Any = None) -> tuple[list[str], list[str]]:
    """(label, role) of every position of one batch item: image tokens as ``<img r,c>``, markers by their span
    name when no token ids are known, text tokens as the tokenizer's strings (``pos N`` without ids)."""
    n = spans.seq_len
    grid = spans.grid[batch].cpu()
    roles = []
    for p in range(n):
        if bool(spans.mask("pad")[batch, p]):
            roles.append("pad")
        elif bool(spans.mask("image")[batch, p]):
            roles.append("image")
        elif bool(spans.mask("text")[batch, p]):
            roles.append("text")
        else:
            roles.append("marker")
    if input_ids is not None:
        ids = torch.as_tensor(input_ids)[batch].tolist()
        labels = _token_strings(tokenizer, ids)
    else:
        labels = [f"pos {p}" for p in range(n)]
        for name in spans.names:  # name the markers after their span (boi, eoi, row_break, ...)
            if name not in ("image", "text", "pad", "last") and not name.startswith("image."):
                for p in spans.positions(name, batch).tolist():
                    labels[p] = f"<{name}>"
    for p in range(n):
        img, tile, r, c = grid[p].tolist()
        if roles[p] == "image" and r >= 0:
            labels[p] = f"<img {r},{c}>" if tile <= 0 else f"<img {tile}:{r},{c}>"
    return labels, roles


def _vocab_payload(lens: Any, sel: torch.Tensor, local: dict[int, int]) -> dict:
    top = lens.top_ids[:, sel].numpy()
    idx = np.searchsorted(np.fromiter(local, dtype=np.int64, count=len(local)), top)  # local: sorted ids -> 0..n-1
    wide = len(local) > 65535  # local vocabulary indices fit uint16 unless the top-k holds > 65k distinct tokens
    out = {"name": lens.vocab, "top": pack_ints(idx) if wide else pack_u16(idx), "top_dtype": "i32" if wide else "u16",
           "top_prob": pack_probs(lens.top_probs[:, sel].float().numpy()),
           "targets": [], "target_prob": None, "target_rank": None}
    if lens.target_ids is not None:
        out["targets"] = [local[int(t)] for t in lens.target_ids.tolist()]
        out["target_prob"] = pack_probs(lens.target_probs[:, sel].float().numpy())
        ranks = lens.target_ranks[:, sel].numpy()
        short = ranks.max(initial=0) < 65535  # uint16 (-1 = outside the vocabulary -> 65535) unless a rank is larger
        out["target_rank"] = pack_u16(np.where(ranks < 0, 65535, ranks)) if short else pack_ints(ranks)
        out["rank_dtype"] = "u16" if short else "i32"
    return out


def lens_view(lens: Any, image: Any = None, *, others: Sequence[Any] = (), batch: int = 0, image_index: int = 0,
              tile: int = 0, input_ids: Any = None, title: str | None = None) -> View:
    """Interactive view of a logit-lens result (and of ``others``: the same rows read out in other
    vocabularies, e.g. ``vocab="image"`` next to ``vocab="text"`` for native models).

    ``image``: the picture as the model saw it (PIL or array), stretched onto the patch grid.
    ``input_ids`` (default: the result's own) names the prompt tokens of the strip.
    """
    results = [lens, *others]
    names = [r.vocab for r in results]
    if len(set(names)) != len(names):
        raise ValueError(f"each lens result must read a different vocabulary; got {names}")
    for r in others:
        if r.layers != lens.layers or not torch.equal(r.positions, lens.positions) or not torch.equal(r.batch_index, lens.batch_index):
            raise ValueError("the results in others= must come from the same input, layers and span as the first one")
    sel = lens.batch_index == batch
    if not bool(sel.any()):
        raise ValueError(f"the lens has no rows of batch item {batch} (it has {sorted(set(lens.batch_index.tolist()))})")
    positions = lens.positions[sel]
    spans = lens.spans
    g = spans.grid[batch].cpu()
    on_image = (g[:, 0] == image_index) & (g[:, 1] == tile) & (g[:, 2] >= 0)
    grid = None
    if bool(on_image.any()):
        grid = {"rows": int(g[on_image, 2].max()) + 1, "cols": int(g[on_image, 3].max()) + 1}
    cells = [[int(g[p, 2]), int(g[p, 3])] if bool(on_image[p]) else None for p in positions.tolist()]
    ids = input_ids if input_ids is not None else getattr(lens, "input_ids", None)
    labels, roles = position_labels(spans, batch, ids, lens.tokenizer)

    vocab_ids: list[int] = []
    for r in results:
        vocab_ids += r.top_ids.unique().tolist() + ([] if r.target_ids is None else r.target_ids.tolist())
    vocab_ids = sorted(set(vocab_ids))
    local = {v: i for i, v in enumerate(vocab_ids)}
    data = {
        "layers": list(lens.layers), "k": int(lens.top_ids.shape[-1]), "rows": positions.tolist(), "cells": cells,
        "grid": grid, "image": image_data_url(image), "labels": labels, "roles": roles, "layer_note": LAYER_NOTE,
        "vocab_strings": _token_strings(lens.tokenizer, vocab_ids), "vocab_ids": vocab_ids,
        "vocabs": [_vocab_payload(r, sel, local) for r in results],
    }
    default = f"logit lens ({', '.join(names)} vocabulary)"
    return View("lens", data, title or default, height=760)


def lens_view_for(model: Any, inputs: dict, image: Any = None, *, targets: Sequence[int] | Sequence[str] | None = None,
                  top_k: int = 5, layers: Sequence[int] | None = None, batch: int = 0, title: str | None = None) -> View:
    """Run the logit lens over every position of ``inputs`` (image patches and prompt tokens) and view it; for
    models with image codes (Chameleon, Emu3, ...) both the text and the image-code vocabulary."""
    from ..analysis.logit_lens import logit_lens, model_image_codes

    kw = dict(span="all", top_k=top_k, targets=targets, layers=layers)
    if model_image_codes(model) is not None:
        first, others = logit_lens(model, inputs, vocab="text", **kw), [logit_lens(model, inputs, vocab="image", **kw)]
    else:
        first, others = logit_lens(model, inputs, vocab="all", **kw), []
    return lens_view(first, image, others=others, batch=batch, input_ids=inputs["input_ids"], title=title)
