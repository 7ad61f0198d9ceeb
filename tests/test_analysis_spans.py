"""Span selection: derived names, unions, random and high-norm spans, grid cells."""

from __future__ import annotations

import torch

from hooked_vlm.analysis import grid_cells_mask, high_norm_span, random_span, span_mask, spans_of
from tests import tiny_analysis as ta


def test_derived_spans_by_hand():
    model, hf = ta.model_and_hf()
    inputs = ta.batch(hf, [1, 2], [5, 3])
    s = spans_of(model, inputs)
    for b in range(2):
        ids = inputs["input_ids"][b].tolist()
        boi, eoi = ids.index(ta.BOI), ids.index(ta.EOI)
        real = inputs["attention_mask"][b].bool()
        assert span_mask(s, "image_region")[b].nonzero().flatten().tolist() == list(range(boi, eoi + 1))
        assert span_mask(s, "image_last")[b].nonzero().flatten().tolist() == [eoi - 1]
        assert span_mask(s, "image_first")[b].nonzero().flatten().tolist() == [boi + 1]
        assert span_mask(s, "after_image")[b].nonzero().flatten().tolist() == list(range(eoi + 1, len(ids)))
        first = int(real.float().argmax())
        assert span_mask(s, "before_image")[b].nonzero().flatten().tolist() == list(range(first, boi))
        assert torch.equal(span_mask(s, ["boi", "eoi"])[b], span_mask(s, "boi")[b] | span_mask(s, "eoi")[b])
    assert torch.equal(span_mask(s, [0, 3])[:, [0, 3]], torch.ones(2, 2, dtype=torch.bool))
    assert not span_mask(s, "generated").any()


def test_random_high_norm_and_grid_spans():
    model, hf = ta.model_and_hf()
    inputs = ta.batch(hf, [1, 2], [5, 3])
    s = spans_of(model, inputs)
    r = random_span(s, 5, seed=1)
    assert r.sum(1).tolist() == [5, 5] and not (r & ~s.mask("image")).any()
    target = s.positions("image", 0)[3].item()

    def edit(t, hook):  # make one image token of item 0 a high-norm "register"
        t = t.clone()
        t[0, target] = 100.0
        return t

    with model.hooks(fwd_hooks=[("hook_embed", edit)]):
        reg = high_norm_span(model, inputs, n_sd=2.0)
    assert reg[0].nonzero().flatten().tolist() == [target]
    cells = grid_cells_mask(s, [(0, 0)], buffer=1, batch=1)
    assert sorted(s.grid[1, cells[1], 2:].tolist()) == [[0, 0], [0, 1], [1, 0], [1, 1]] and not cells[0].any()
