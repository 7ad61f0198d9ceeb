"""Attention flow, modality separation, neighbourhood overlap and the gate finder vs hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hooked_vlm.analysis import (attention_flow, find_gate, forward_with_hooks, label_overlap, modality_separation,
                                 neighbourhood_overlap, plot_attention_flow, span_mask)
from hooked_vlm.analysis import spans_of
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
    assert plot_attention_flow(flow).axes


def test_modality_separation_equals_hand_cosines():
    model, _ = ta.model_and_hf()
    data = _data(6)
    df = modality_separation(model, data, layers=[0, 2], n_tokens=2, seed=3, batch_size=4, progress=False)
    assert list(df.layer) == [0, 2]
    assert ((df.cos_q1 <= df.cos_median) & (df.cos_median <= df.cos_q3)).all()
    assert ((df.homogeneity >= 0) & (df.homogeneity <= 1)).all()
    # all positions (n_tokens=None is not sampled): compare with a hand computation from caches
    full = modality_separation(model, data[:2], layers=[1], n_tokens=10**6, homogeneity=False, progress=False)
    cos = []
    for ex in data[:2]:
        _, cache = model.run_with_cache(**ex, names_filter="blocks.1.hook_resid_post")
        r = cache["blocks.1.hook_resid_post"][0]
        img = torch.nn.functional.normalize(r[span_mask(cache.spans, "image")[0]], dim=-1)
        txt = torch.nn.functional.normalize(r[span_mask(cache.spans, "text")[0]], dim=-1)
        cos.append((img @ txt.T).abs().flatten())
    q = torch.quantile(torch.cat(cos), torch.tensor([0.25, 0.5, 0.75]))
    assert np.abs(full[["cos_q1", "cos_median", "cos_q3"]].values[0] - q.numpy()).max() <= ATOL


def test_cluster_homogeneity_extremes():
    from hooked_vlm.analysis import cluster_homogeneity

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(10, 4)) * 0.05 + [1, 0, 0, 0], rng.normal(size=(10, 4)) * 0.05 + [0, 1, 0, 0]
    for method in ("kmeans", "agglomerative"):
        assert cluster_homogeneity(np.concatenate([a, b]), [0] * 10 + [1] * 10, method=method) == pytest.approx(1.0)
        mixed = np.concatenate([a[:5], b[:5], a[5:], b[5:]])
        assert cluster_homogeneity(mixed, [0] * 10 + [1] * 10, method=method) <= 0.1


def test_neighbourhood_overlap_by_hand_and_label_overlap():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 5))
    labels = rng.integers(0, 2, size=12)
    cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (x / np.linalg.norm(x, axis=1, keepdims=True)).T
    np.fill_diagonal(cos, -np.inf)
    nn = np.argsort(-cos, axis=1)[:, :3]
    assert abs(neighbourhood_overlap(x, labels, k=3) - (labels[nn] == labels[:, None]).mean()) <= 1e-9
    separated = np.concatenate([rng.normal(size=(6, 5)) + 20, rng.normal(size=(6, 5)) - 20])
    assert neighbourhood_overlap(separated, [0] * 6 + [1] * 6, k=3) == 1.0
    model, _ = ta.model_and_hf()
    df = label_overlap(model, _data(6), [0, 1, 0, 1, 0, 1], layers=[0, 2], k=2, progress=False)
    assert set(df.span) == {"eoi", "image_last", "image_mean"} and len(df) == 6
    assert ((df.overlap >= 0) & (df.overlap <= 1)).all()
