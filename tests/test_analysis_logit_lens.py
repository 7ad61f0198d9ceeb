"""Logit lens: equals TransformerLens' accumulated_resid + apply_ln_to_stack, chunking, readouts, grid."""

from __future__ import annotations

import torch

from hooked_vlm.analysis import logit_lens, span_mask
from tests import tiny_analysis as ta


def _setup():
    model, hf = ta.model_and_hf()
    inputs = ta.batch(hf, [1, 2], [5, 3])
    with torch.no_grad():
        logits, cache = model.run_with_cache(**inputs)
    return model, inputs, logits, cache


def test_lens_equals_transformer_lens_accumulated_resid():
    model, inputs, logits, cache = _setup()
    res = logit_lens(model, inputs, targets=[5, 7, 11], top_k=4)
    with torch.no_grad():
        acc = cache.accumulated_resid(apply_ln=False)  # [n_layers + 1, batch, pos, d]
        normed = cache.apply_ln_to_stack(acc, recompute_ln=True)
        probs = (normed @ model.W_U).float().softmax(-1)  # [layer, batch, pos, vocab]
    assert acc.shape[0] == model.cfg.n_layers + 1 == len(res.layers)
    sel = probs[:, res.batch_index, res.positions]  # [layer, n, vocab]
    top = sel.topk(4, -1)
    assert (top.values - res.top_probs).abs().max().item() <= 1e-5
    assert torch.equal(top.indices, res.top_ids)
    assert (sel[..., [5, 7, 11]] - res.target_probs).abs().max().item() <= 1e-6
    ranks = (sel[..., None, :] > sel[..., [5, 7, 11]][..., None]).sum(-1)
    assert torch.equal(ranks, res.target_ranks)


def test_weight_convention_last_layer_is_model_logits():
    model, inputs, logits, cache = _setup()
    with torch.no_grad():
        # TL 4.3: accumulated_resid(apply_ln=True) recomputes the final norm with model.ln_final,
        # which includes its weight in hooked_vlm: the true lens, nothing to multiply
        recomputed = cache.accumulated_resid(apply_ln=True)[-1] @ model.W_U
        # the cached-scale path (recompute_ln=False) is x / scale times ln_final's weight (hooked_vlm.tl_cache)
        stack = cache.accumulated_resid(apply_ln=False)
        cached = cache.apply_ln_to_stack(stack, recompute_ln=False)[-1]
        unweighted = stack[-1] / cache["ln_final.hook_scale"]
    real = inputs["attention_mask"].bool()
    assert (recomputed[real] - logits[real]).abs().max().item() <= 1e-4
    assert ((cached @ model.W_U) - logits)[real].abs().max().item() <= 1e-4
    assert ((unweighted @ model.W_U) - logits)[real].abs().max().item() > 1e-3  # the tiny model's norm weight is not 1
    res = logit_lens(model, inputs, span="all", layers=[-1], top_k=1)
    assert torch.equal(res.top_ids[0, :, 0], logits[res.batch_index, res.positions].argmax(-1))


def test_chunking_and_cache_path_give_the_same_numbers():
    model, inputs, _, cache = _setup()
    a = logit_lens(model, inputs, targets=[5], layers=[0, 2])
    b = logit_lens(model, inputs, targets=[5], layers=[0, 2], chunk_elems=1)  # one row per chunk
    c = logit_lens(model, cache=cache, targets=[5], layers=[0, 2])
    for other in (b, c):
        assert torch.equal(a.top_ids, other.top_ids)
        assert (a.top_probs - other.top_probs).abs().max().item() <= 1e-6
        assert (a.target_probs - other.target_probs).abs().max().item() <= 1e-6


def test_text_and_image_vocabulary_readouts():
    model, inputs, _, cache = _setup()
    codes = list(range(100, 120))
    text = logit_lens(model, inputs, targets=[5, 110], image_code_ids=codes, top_k=3)
    image = logit_lens(model, inputs, targets=[5, 110], image_code_ids=codes, vocab="image", top_k=3)
    assert text.vocab == "text" and image.vocab == "image"
    with torch.no_grad():
        acc = cache.apply_ln_to_stack(cache.accumulated_resid(apply_ln=False), recompute_ln=True)
        lg = (acc @ model.W_U)[:, text.batch_index, text.positions]
    p_text = lg[..., :100].softmax(-1)
    p_img = lg[..., 100:].softmax(-1)
    assert (p_text.topk(3, -1).values - text.top_probs).abs().max().item() <= 1e-5
    assert bool((text.top_ids < 100).all()) and bool((image.top_ids >= 100).all())
    assert (p_text[..., 5] - text.target_probs[..., 0]).abs().max().item() <= 1e-6
    assert bool(text.target_probs[..., 1].isnan().all()) and bool((text.target_ranks[..., 1] == -1).all())
    assert (p_img[..., 10] - image.target_probs[..., 1]).abs().max().item() <= 1e-6


def test_to_grid_dataframe_and_plot():
    model, inputs, _, cache = _setup()
    res = logit_lens(model, inputs, targets=[5], layers=[1, 3])
    grid = res.to_grid(batch=1)
    assert grid.shape == (2, 4, 4)
    g = cache.spans.grid[1]
    for i, p in enumerate(res.positions[res.batch_index == 1].tolist()):
        r, c = g[p, 2].item(), g[p, 3].item()
        row = ((res.batch_index == 1) & (res.positions == p)).nonzero().item()
        assert grid[1, r, c].item() == res.target_probs[1, row, 0].item()
    df = res.to_dataframe("targets")
    assert len(df) == 2 * int(span_mask(cache.spans, "image").sum())
    assert len(res.to_dataframe("top")) == 2 * len(res.positions) * 5
    fig = res.plot()
    assert len([ax for ax in fig.axes if ax.images]) == 2
