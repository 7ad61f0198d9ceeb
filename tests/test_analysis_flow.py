"""Attention flow vs a hand computation from cached attention patterns."""

from __future__ import annotations

import numpy as np

from hooked_vlm.analysis import attention_flow, plot_attention_flow, span_mask
from tests import tiny_analysis as ta

ATOL = 1e-5


def _data(n=4):
    _, hf = ta.model_and_hf()
    return [ta.example(hf, s, text_after=3 + s % 3) for s in range(n)]


def _pattern_cache(model, ex):
    _, cache = model.run_with_cache(**ex, names_filter=lambda n: n.endswith("hook_pattern"))
    return cache


def test_attention_flow_equals_cache_computation():
    model, _ = ta.model_and_hf()
    data = _data()
    flow = attention_flow(model, data, batch_size=3, progress=False)  # two batches, mixed lengths
    roles = ["eoi", "image_last", "boi", "image_other"]
    assert list(dict.fromkeys(flow.role)) == roles
    hand = np.zeros((model.cfg.n_layers, len(roles)))
    for ex in data:
        cache = _pattern_cache(model, ex)
        s = cache.spans
        q = span_mask(s, "after_image")[0]
        keys = [span_mask(s, "eoi")[0], span_mask(s, "image_last")[0], span_mask(s, "boi")[0], span_mask(s, "image_other")[0]]
        for l in range(model.cfg.n_layers):
            per_key = cache[f"blocks.{l}.attn.hook_pattern"][0].sum(0)[q].mean(0)
            hand[l] += [per_key[k].sum().item() for k in keys]
    hand /= len(data)
    for l in range(model.cfg.n_layers):
        got = flow[(flow.layer == l) & (flow["head"] == -1)].set_index("role").loc[roles]
        assert np.abs(got.weight.values - hand[l]).max() <= ATOL
        assert np.abs(got.share.values - hand[l] / hand[l].sum()).max() <= ATOL
    per_head = attention_flow(model, data[0], per_head=True, keys=["eoi", "image", "before_image"])
    assert set(per_head["head"]) == set(range(model.cfg.n_heads))
    summed = per_head.groupby(["layer", "role"]).weight.sum()
    one = attention_flow(model, data[0], keys=["eoi", "image", "before_image"]).set_index(["layer", "role"]).weight
    assert np.abs(summed.sort_index().values - one.sort_index().values).max() <= ATOL
    ax = plot_attention_flow(flow).axes[0]  # stacked bars: role by role, one bar per layer, height = share
    heights = np.array([bar.get_height() for bar in ax.patches]).reshape(len(roles), model.cfg.n_layers)
    assert np.abs(heights.T - hand / hand.sum(1, keepdims=True)).max() <= ATOL
