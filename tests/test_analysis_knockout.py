"""Attention knockout: mask == -inf by hand on scores, zero == edit by hand on the pattern, and its properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch

from hooked_vlm.analysis import spans_of
from hooked_vlm.analysis import attention_knockout, forward_with_hooks, knockout_hooks, span_mask
from tests import tiny_analysis as ta

ATOL = 1e-5


def _by_hand_hook(inputs, src, dst, heads, kind):
    model, _ = ta.model_and_hf()

    def edit(t, hook):
        spans = hook.spans
        q = span_mask(spans, dst)[:, hook.query_positions]
        k = span_mask(spans, src)[:, : t.shape[-1]]
        out = t.clone()
        for b in range(t.shape[0]):
            for h in (heads if heads is not None else range(t.shape[1])):
                block = q[b][:, None] & k[b][None, :]
                out[b, h][block] = float("-inf") if kind == "scores" else 0.0
        return out

    return edit


@pytest.mark.parametrize("heads", [None, [1, 3]])
def test_mask_equals_minus_inf_on_scores_and_zero_equals_pattern_edit(heads):
    model, hf = ta.model_and_hf()
    inputs = ta.batch(hf, [1, 2], [5, 3])
    layers = [1, 2]
    for mode, hook, kind in (("mask", "attn.hook_attn_scores", "scores"), ("zero", "attn.hook_pattern", "pattern")):
        ours = attention_knockout(model, inputs, src="image", dst="after_image", layers=layers, heads=heads, mode=mode)
        hand = forward_with_hooks(model, inputs, [(f"blocks.{l}.{hook}", _by_hand_hook(inputs, "image", "after_image", heads, kind))
                                                  for l in layers])
        plain = forward_with_hooks(model, inputs)
        real = inputs["attention_mask"].bool()
        assert (ours - hand)[real].abs().max().item() <= ATOL, mode
        assert (ours - plain)[real].abs().max().item() > 1e-3, mode  # the knockout does something


def test_mask_mode_stays_on_the_fast_path():
    model, _ = ta.model_and_hf()
    hooks = knockout_hooks(model, "image", "text", mode="mask")
    assert all(name.endswith("attn.hook_mask") for name, _ in hooks)
    with model.hooks(fwd_hooks=hooks):
        assert not any(b.attn._explicit() for b in model.blocks)


def test_blocking_image_region_makes_later_text_independent_of_the_image():
    # only "mask" gives exact independence: "zero" keeps the image keys in the softmax denominator
    model, hf = ta.model_and_hf()
    a, b = ta.same_shape_pair(hf)
    la = attention_knockout(model, a, src="image_region", dst="text", mode="mask")
    lb = attention_knockout(model, b, src="image_region", dst="text", mode="mask")
    pa, pb = forward_with_hooks(model, a), forward_with_hooks(model, b)
    after = span_mask(spans_of(model, a), "after_image")[0]
    assert (la[0, after] - lb[0, after]).abs().max().item() <= ATOL
    assert (pa[0, after] - pb[0, after]).abs().max().item() > 1e-3


def test_knockout_of_nothing_changes_nothing():
    model, hf = ta.model_and_hf()
    inputs = ta.batch(hf, [1, 2], [5, 3])
    plain = forward_with_hooks(model, inputs)
    real = inputs["attention_mask"].bool()
    for mode in ("mask", "zero"):
        # text before the image cannot see the image anyway (causal), so nothing is blocked
        none = attention_knockout(model, inputs, src="image", dst="before_image", mode=mode)
        assert (none - plain)[real].abs().max().item() <= ATOL


@pytest.mark.parametrize("mode", ["mask", "zero"])
def test_knockout_persists_through_generation(mode):
    model, hf = ta.model_and_hf()
    a, b = ta.same_shape_pair(hf)
    if mode == "mask":  # new queries are blocked too: the generated tokens' states cannot see the image
        def states(inputs, hooks):
            seen = []
            rec = lambda t, hook: seen.append(t[:, -1].clone()) if t.shape[1] == 1 else None
            model.generate(**inputs, fwd_hooks=hooks + [("ln_final.hook_normalized", rec)], max_new_tokens=4)
            return torch.cat(seen)

        ko = knockout_hooks(model, "image_region", "text")
        assert (states(a, ko) - states(b, ko)).abs().max().item() <= ATOL
        assert (states(a, []) - states(b, [])).abs().max().item() > 1e-3
    # same tokens as the no-KV-cache path, where every step recomputes the whole sequence
    hooks = knockout_hooks(model, "image", "generated", layers=[0, 2], mode=mode)
    with_cache = model.generate(**a, fwd_hooks=hooks, max_new_tokens=6, return_type="tokens")
    without = model.generate(**a, fwd_hooks=hooks, max_new_tokens=6, return_type="tokens", use_kv_cache=False)
    assert torch.equal(with_cache, without)
    # and the knockout of the generated queries does something (the span is not empty while generating)
    assert not torch.equal(with_cache, model.generate(**a, max_new_tokens=6, return_type="tokens"))


# ---- by-hand positions: from the token ids, not from the spans ----

def _prompt_positions(inputs):
    """Per item: (image positions, text positions after EOI) of the prompt, from the token ids."""
    out = []
    for ids in inputs["input_ids"].tolist():
        eoi = ids.index(ta.EOI)
        out.append(([p for p, t in enumerate(ids) if t == ta.tiny.IMAGE_TOKEN], list(range(eoi + 1, len(ids)))))
    return out


def _text_positions(inputs, length):
    """Per item: every real position outside BOI..EOI, plus every position >= the prompt length (generated)."""
    out = []
    for ids, real in zip(inputs["input_ids"].tolist(), inputs["attention_mask"].tolist()):
        boi, eoi = ids.index(ta.BOI), ids.index(ta.EOI)
        out.append([p for p in range(length) if (p >= len(ids) or (real[p] and not boi <= p <= eoi))])
    return out


def _block_by_hand(keys_of, queries_of, heads=None, value=float("-inf")):
    """Hook for hook_attn_scores (value=-inf) or hook_pattern (value=0): [b, h, q, k] rows are the absolute
    positions k_len - q_len ... k_len - 1 (KV cache or not); ``keys_of(b)`` / ``queries_of(b, k_len)`` list positions."""
    def block(t, hook):
        q_len, k_len = t.shape[-2], t.shape[-1]
        out = t.clone()
        for b in range(t.shape[0]):
            qs = [p for p in queries_of(b, k_len) if k_len - q_len <= p < k_len]
            ks = [k for k in keys_of(b) if k < k_len]
            for h in (heads if heads is not None else range(t.shape[1])):
                for p in qs:
                    out[b, h, p - (k_len - q_len), ks] = value
        return out
    return block


def test_blocked_edges_are_exactly_the_pairs_of_the_two_spans():
    from hooked_vlm.analysis import blocked_edges

    model, hf = ta.model_and_hf()
    inputs = ta.batch(hf, [1, 2], [5, 3])  # left-padded: item 1 starts with 2 pads
    length = inputs["input_ids"].shape[1]
    got = []

    def rec(pattern, hook):
        got.append((hook.query_positions.tolist(), blocked_edges(hook, "image", "after_image", pattern.shape[-1]),
                    blocked_edges(hook, "image", "generated", pattern.shape[-1])))

    model.generate(**inputs, fwd_hooks=[("blocks.0.attn.hook_pattern", rec)], max_new_tokens=3, stop_at_eos=False)
    assert len(got) == 3  # the prompt pass and two one-row steps
    pos = _prompt_positions(inputs)
    for step, (qp, after, gen) in enumerate(got):
        k_len = length + step
        assert after.shape == gen.shape == (2, 1, len(qp), k_len)
        for b, (image, after_eoi) in enumerate(pos):
            queries = [p for p in after_eoi + list(range(length, k_len)) if p in qp]
            want = {(qp.index(q), k) for q in queries for k in image}
            assert set(map(tuple, after[b, 0].nonzero().tolist())) == want, (step, b)
            want_gen = {(qp.index(q), k) for q in range(length, k_len) if q in qp for k in image}
            assert set(map(tuple, gen[b, 0].nonzero().tolist())) == want_gen, (step, b)
    assert len(set(map(tuple, got[0][1][0, 0].nonzero().tolist()))) == 5 * 16  # 5 text tokens after EOI x 16 image
    assert not got[0][2].any() and got[1][2].any()  # "generated": empty on the prompt, the new row afterwards


@pytest.mark.parametrize("use_kv_cache", [True, False])
def test_generated_span_holds_exactly_the_generated_positions(use_kv_cache):
    model, hf = ta.model_and_hf()
    inputs = ta.batch(hf, [1, 2], [5, 3])
    length = inputs["input_ids"].shape[1]
    seen = []
    rec = lambda t, hook: seen.append((span_mask(hook.spans, "generated").clone(), hook.query_positions.tolist()))
    model.generate(**inputs, fwd_hooks=[("blocks.1.hook_resid_pre", rec)], max_new_tokens=4, stop_at_eos=False,
                   use_kv_cache=use_kv_cache)
    assert len(seen) == 4
    for step, (gen, qp) in enumerate(seen):
        want = torch.zeros(2, length + step, dtype=torch.bool)
        want[:, length:] = True
        assert torch.equal(gen, want), step
        assert qp == (list(range(length + step)) if step == 0 or not use_kv_cache else [length + step - 1])


@pytest.mark.parametrize("mode", ["mask", "zero"])
def test_knockout_of_generated_queries_equals_blocking_them_by_hand(mode):
    model, hf = ta.model_and_hf()
    inputs = ta.batch(hf, [0, 1], [5, 3])
    length = inputs["input_ids"].shape[1]
    pos = _prompt_positions(inputs)
    hand = _block_by_hand(lambda b: pos[b][0], lambda b, k_len: range(length, k_len),
                          value=float("-inf") if mode == "mask" else 0.0)
    site = "attn.hook_attn_scores" if mode == "mask" else "attn.hook_pattern"
    ours_tok, ours = ta.generate_steps(model, inputs, knockout_hooks(model, "image", "generated", mode=mode))
    hand_tok, by_hand = ta.generate_steps(model, inputs, [(f"blocks.{l}.{site}", hand) for l in range(model.cfg.n_layers)])
    plain_tok, plain = ta.generate_steps(model, inputs, [])
    assert torch.equal(ours_tok, hand_tok)
    assert (ours - by_hand).abs().max().item() <= ATOL
    assert (ours[:, 0] - plain[:, 0]).abs().max().item() <= ATOL  # the prompt pass is untouched (no generated query)
    assert (ours[:, 1:] - plain[:, 1:]).abs().max().item() > 1e-3
    assert not torch.equal(ours_tok, plain_tok)


@pytest.mark.parametrize("heads", [None, [1]])
def test_knockout_generate_equals_generate_with_the_hooks_by_hand(heads):
    from hooked_vlm.analysis import knockout_generate

    model, hf = ta.model_and_hf()
    inputs = ta.batch(hf, [0, 3], [5, 3])
    pos = _prompt_positions(inputs)
    layers = [0, 2]
    hand = _block_by_hand(lambda b: pos[b][0], lambda b, k_len: _text_positions(inputs, k_len)[b], heads)
    kw = dict(max_new_tokens=6, return_type="tokens", stop_at_eos=False)
    ours = knockout_generate(model, inputs, "image", "text", layers=layers, heads=heads, **kw)
    by_hand = model.generate(**inputs, fwd_hooks=[(f"blocks.{l}.attn.hook_attn_scores", hand) for l in layers], **kw)
    assert torch.equal(ours, by_hand)
    assert not torch.equal(ours, model.generate(**inputs, **kw))


def test_layer_windows_by_hand():
    from hooked_vlm.analysis import layer_windows

    r = lambda a, b: list(range(a, b))
    assert layer_windows(32, 10) == [r(0, 10), r(10, 20), r(20, 30), r(30, 32)]
    assert layer_windows(32, 10, 5) == [r(0, 10), r(5, 15), r(10, 20), r(15, 25), r(20, 30), r(25, 32)]
    assert layer_windows(24, 8, 8) == [r(0, 8), r(8, 16), r(16, 24)]
    assert layer_windows(3, 5) == [r(0, 3)]
    assert layer_windows(10, 2, 5) == [r(0, 2), r(5, 7)]  # gaps when stride > size, no empty window
    assert layer_windows(11, 4, 2) == [r(0, 4), r(2, 6), r(4, 8), r(6, 10), r(8, 11)]
    for bad in (dict(size=0), dict(size=3, stride=0), dict(size=3, stride=-1)):
        with pytest.raises(ValueError, match="size and stride"):
            layer_windows(8, **bad)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), size=st.integers(1, 12), stride=st.integers(1, 12))
def test_layer_windows_properties(n, size, stride):
    from hooked_vlm.analysis import layer_windows

    w = layer_windows(n, size, stride)
    starts = [x[0] for x in w]
    assert starts == list(range(0, stride * len(w), stride))  # start 0, then every `stride` layers
    assert all(x == list(range(x[0], min(x[0] + size, n))) for x in w)  # consecutive, `size` long unless cut at n
    assert all(x for x in w)
    if stride > size:  # gaps: every start below n is used
        assert starts[-1] + stride >= n
    else:  # overlapping or touching windows cover every layer and stop once they reach the end
        assert sorted({l for x in w for l in x}) == list(range(n)) and all(x[-1] < n - 1 for x in w[:-1])
