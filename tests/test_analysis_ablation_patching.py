"""Span ablation and activation patching / steering: equal to the same edits by hand, and their properties."""

from __future__ import annotations

import torch

from hooked_vlm.analysis import (activation_patching, distribution_similarity, forward_with_hooks, last_logits,
                                 logit_diff, mean_activation, patching_sweep, span_ablation, span_activations,
                                 steer, steering_vector)
from hooked_vlm.analysis import spans_of
from tests import tiny_analysis as ta

ATOL = 1e-5


def _hand(positions_fn, value_fn):
    def edit(t, hook):
        out = t.clone()
        for b in range(t.shape[0]):
            pos = positions_fn(hook.spans, b)
            out[b, pos] = value_fn(b, len(pos)).to(t.dtype)
        return out
    return edit


def test_zero_mean_resample_ablation_equal_hand_edits():
    model, hf = ta.model_and_hf()
    inputs = ta.batch(hf, [1, 2], [5, 3])
    real = inputs["attention_mask"].bool()
    img = lambda spans, b: spans.positions("image", b)
    mean = torch.randn(model.cfg.d_model)
    src = torch.randn(2, 16, model.cfg.d_model)
    for how, value, fn in (("zero", None, lambda b, n: torch.zeros(n, model.cfg.d_model)),
                           ("mean", mean, lambda b, n: mean.expand(n, -1)),
                           ("resample", src, lambda b, n: src[b])):
        ours = span_ablation(model, inputs, "image", how, value)
        hand = forward_with_hooks(model, inputs, [("hook_embed", _hand(img, fn))])
        assert (ours - hand)[real].abs().max().item() <= ATOL, how
        assert (ours - forward_with_hooks(model, inputs))[real].abs().max().item() > 1e-3, how


def test_resampling_the_image_embeds_reproduces_the_other_image():
    model, hf = ta.model_and_hf()
    a, b = ta.same_shape_pair(hf)
    src = span_activations(model, a, "image", "hook_embed")
    assert src.shape == (1, 16, model.cfg.d_model)
    out = span_ablation(model, b, "image", "resample", src)
    assert (out - forward_with_hooks(model, a)).abs().max().item() <= ATOL


def test_mean_activation_equals_cache_mean():
    model, hf = ta.model_and_hf()
    data = [ta.example(hf, s, text_after=t) for s, t in ((1, 5), (2, 3), (3, 7))]
    ours = mean_activation(model, data, batch_size=2, progress=False)
    rows = []
    for ex in data:
        _, cache = model.run_with_cache(**ex, names_filter="hook_embed")
        rows.append(cache["hook_embed"][0, cache.spans.positions("image")])
    assert (ours - torch.cat(rows).mean(0)).abs().max().item() <= ATOL
    per_pos = mean_activation(model, data, per_position=True, batch_size=3, progress=False)
    assert (per_pos - torch.stack(rows).mean(0)).abs().max().item() <= ATOL


def test_patching_every_position_of_the_residual_reproduces_the_source():
    model, hf = ta.model_and_hf()
    a, b = ta.same_shape_pair(hf)
    la = forward_with_hooks(model, a)
    for layer in (0, 2):
        out = activation_patching(model, b, a, span="all", site="resid_pre", layers=layer)
        assert (out - la).abs().max().item() <= ATOL
    assert (forward_with_hooks(model, b) - la).abs().max().item() > 1e-3


def test_eoi_patching_and_sweep_equal_hand_computation():
    model, hf = ta.model_and_hf()
    a = ta.batch(hf, [1, 2], [5, 3])
    b = ta.batch(hf, [3, 4], [2, 6])  # different lengths: the k-th eoi goes to the k-th eoi
    _, ca = model.run_with_cache(**a)
    eoi_a = [ca.spans.positions("eoi", i) for i in range(2)]
    for site, hook in (("resid_pre", "blocks.{l}.hook_resid_pre"), ("attn_in", "blocks.{l}.ln1.hook_normalized")):
        layers = [1, 2]
        ours = activation_patching(model, b, a, span="eoi", site=site, layers=layers)
        hooks = [(hook.format(l=l), _hand(lambda s, i: s.positions("eoi", i),
                                          lambda i, n, l=l: ca[hook.format(l=l)][i, eoi_a[i]])) for l in layers]
        hand = forward_with_hooks(model, b, hooks)
        assert (ours - hand).abs().max().item() <= ATOL, site
    tokens = (5, 7)
    df = patching_sweep(model, b, a, tokens, span="eoi", site="resid_pre", layers=[0, 2], cumulative=True)
    assert len(df) == 4 and set(df.layer) == {0, 2}
    sb = spans_of(model, b)
    patched = activation_patching(model, b, a, span="eoi", layers=range(2, 3))
    p_last = last_logits(patched, sb)
    src_last = last_logits(forward_with_hooks(model, a), spans_of(model, a))
    row = df[(df.layer == 2) & (df.batch == 1)].iloc[0]
    assert abs(row.similarity - distribution_similarity(p_last, src_last)[1].item()) <= 1e-6
    assert abs(row.logit_diff - logit_diff(p_last, torch.tensor(tokens))[1].item()) <= 1e-5
    clean = logit_diff(last_logits(forward_with_hooks(model, b), sb), torch.tensor(tokens))[1].item()
    assert row.flipped == ((row.logit_diff > 0) != (clean > 0))


def test_steering_adds_the_vector_at_the_span():
    model, hf = ta.model_and_hf()
    inputs = ta.batch(hf, [1, 2], [5, 3])
    v = torch.randn(model.cfg.d_model)
    ours = steer(model, inputs, v, scale=2.0, span="eoi", site="resid_pre", layers=[1])
    hand = forward_with_hooks(model, inputs, [("blocks.1.hook_resid_pre", _hand(
        lambda s, b: s.positions("eoi", b), lambda b, n: torch.zeros(n, v.shape[0])))])
    assert (steer(model, inputs, v * 0, span="eoi", layers=[1]) - forward_with_hooks(model, inputs)).abs().max().item() <= ATOL
    _, cache = model.run_with_cache(**inputs, names_filter="blocks.1.hook_resid_pre")
    pos = [cache.spans.positions("eoi", b) for b in range(2)]
    manual = forward_with_hooks(model, inputs, [("blocks.1.hook_resid_pre", _hand(
        lambda s, b: s.positions("eoi", b), lambda b, n: cache["blocks.1.hook_resid_pre"][b, pos[b]] + 2.0 * v))])
    assert (ours - manual).abs().max().item() <= ATOL
    assert (ours - hand).abs().max().item() > 1e-3
    a, b = ta.same_shape_pair(hf)
    vec = steering_vector(model, a, b, span="eoi", site="resid_pre", layer=1)
    ea = span_activations(model, a, "eoi", "blocks.1.hook_resid_pre")[0, 0]
    eb = span_activations(model, b, "eoi", "blocks.1.hook_resid_pre")[0, 0]
    assert (vec - (ea - eb)).abs().max().item() <= ATOL


def test_span_edit_on_an_activation_without_positions_is_refused():
    import pytest

    model, hf = ta.model_and_hf()
    with pytest.raises(ValueError, match="hook_embed instead of hook_image_embeds"):
        span_ablation(model, ta.example(hf, 1), "image", "zero", hook_name="hook_image_embeds")


def test_ablation_hook_in_generation_edits_the_prompt_image_once_and_every_new_text_row():
    from hooked_vlm.analysis import ablation_hook

    model, hf = ta.model_and_hf()
    inputs = ta.batch(hf, [1, 2], [5, 3])
    length = inputs["input_ids"].shape[1]
    ids, real = inputs["input_ids"].tolist(), inputs["attention_mask"].tolist()
    image = [[p for p, t in enumerate(row) if t == ta.tiny.IMAGE_TOKEN] for row in ids]
    mean = torch.randn(model.cfg.d_model)

    def mean_by_hand(t, hook):  # the image rows exist only in the prompt pass (all `length` rows at once)
        if t.shape[1] != length:
            return t
        out = t.clone()
        for b in range(t.shape[0]):
            out[b, image[b]] = mean
        return out

    ours_tok, ours = ta.generate_steps(model, inputs, [("hook_embed", ablation_hook("image", "mean", mean))])
    hand_tok, hand = ta.generate_steps(model, inputs, [("hook_embed", mean_by_hand)])
    plain_tok, plain = ta.generate_steps(model, inputs, [])
    assert torch.equal(ours_tok, hand_tok) and (ours - hand).abs().max().item() <= ATOL
    assert (ours - plain).abs().max().item() > 1e-3 and not torch.equal(ours_tok, plain_tok)

    def zero_text_by_hand(t, hook):  # no KV cache: every step recomputes the whole sequence
        out = t.clone()
        for b in range(t.shape[0]):
            boi, eoi = ids[b].index(ta.BOI), ids[b].index(ta.EOI)
            text = [p for p in range(t.shape[1]) if p >= length or (real[b][p] and not boi <= p <= eoi)]
            out[b, text] = 0
        return out

    site = "blocks.1.hook_resid_pre"
    ours_tok, ours = ta.generate_steps(model, inputs, [(site, ablation_hook("text", "zero"))])
    hand_tok, hand = ta.generate_steps(model, inputs, [(site, zero_text_by_hand)], use_kv_cache=False)
    assert torch.equal(ours_tok, hand_tok) and (ours - hand).abs().max().item() <= ATOL
    assert (ours - plain).abs().max().item() > 1e-3
