"""Attention knockout: mask == -inf by hand on scores, zero == edit by hand on the pattern, and its properties."""

from __future__ import annotations

import pytest
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
