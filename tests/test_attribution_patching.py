"""attribution_patching: exact where the metric is linear in the patched activation, equal to the gradient by
finite differences elsewhere, and rank-correlated with real activation patching on the trained toy LLaVA."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from hooked_vlm.analysis import (activation_patching, attribution_patching, exact_patching, last_logit_diff_metric,
                                 rank_correlation, source_activations)
from tests import tiny

TOKENS = (5, 7)


@functools.lru_cache(maxsize=None)
def pair():
    """The tiny LLaVA's padded batch of 3 (clean) and, as corrupt, other images and other text tokens (a random
    model's logits hardly move with the images alone)."""
    built = tiny.llava()
    clean = dict(built.inputs)
    ids = clean["input_ids"]
    text = clean["attention_mask"].bool() & (ids != tiny.IMAGE_TOKEN)
    text[:, 0] = False  # keep BOS
    corrupt = dict(clean, input_ids=torch.where(text, (ids + 13) % 80 + 3, ids),
                   pixel_values=torch.randn(clean["pixel_values"].shape, generator=torch.Generator().manual_seed(9)))
    return built.model, clean, corrupt


def test_exact_where_the_metric_is_linear_in_the_activation():
    # logit(a) - logit(b) at the last position is W_U-linear in ln_final.hook_normalized
    model, clean, corrupt = pair()
    metric = last_logit_diff_metric(model, corrupt, TOKENS)
    est = attribution_patching(model, clean, corrupt, metric, hooks=["ln_final.hook_normalized"])
    ex = exact_patching(model, clean, corrupt, metric, hooks=["ln_final.hook_normalized"], chunk=8, progress=False)
    e, x = est.effects["ln_final.hook_normalized"], ex.effects["ln_final.hook_normalized"]
    assert e.shape == (3, 1, clean["input_ids"].shape[1])
    assert float(x[:, 0, -1].abs().min()) > 1e-3  # the last position moves the metric ...
    assert float(x[:, 0, :-1].abs().max()) <= 1e-6  # ... and no other does (0 up to batched-forward rounding)
    assert (e - x).abs().max() <= 1e-4 * max(1.0, float(x.abs().max()))
    assert (est.clean_metric - ex.clean_metric).abs().max() <= 1e-5
    assert (est.corrupt_metric - ex.corrupt_metric).abs().max() <= 1e-5


def test_estimate_is_the_gradient_by_finite_differences():
    model, clean, corrupt = pair()
    metric = last_logit_diff_metric(model, corrupt, TOKENS)
    hooks = ("resid_pre", "attn_out", "mlp_out", "z")
    est = attribution_patching(model, clean, corrupt, metric, hooks=hooks)
    P = clean["input_ids"].shape[1]
    # central difference along (clean - corrupt) at eps = 1e-2: the norms compute in float32, so a smaller step
    # drowns in rounding, a larger one in curvature. Measured max relative error over these entries: 1.2e-3.
    eps = 1e-2
    entries = [("resid_pre", 1, P - 2), ("resid_pre", 0, P - 5), ("attn_out", 0, P - 1), ("mlp_out", 1, P - 1),
               ("z", 1, P - 1)]
    template = {"resid_pre": "blocks.{l}.hook_resid_pre", "attn_out": "blocks.{l}.hook_attn_out",
                "mlp_out": "blocks.{l}.hook_mlp_out", "z": "blocks.{l}.attn.hook_z"}
    names = [template[h].format(l=l) for h, l, _ in entries]
    clean_acts = source_activations(model, clean, names, span=list(range(P)))
    corrupt_acts = source_activations(model, corrupt, names, span=list(range(P)))
    for (hook, layer, pos), name in zip(entries, names):
        a, c = clean_acts[name][:, pos:pos + 1], corrupt_acts[name][:, pos:pos + 1]
        side = [activation_patching(model, corrupt, span=[pos], site=name, source_acts={name: c + s * eps * (a - c)})
                for s in (1, -1)]
        fd = (metric(side[0]) - metric(side[1])) / (2 * eps)  # directional derivative along clean - corrupt, [batch]
        got = est.effects[hook][:, layer, pos]
        assert float(fd.abs().min()) > 5e-4, (hook, fd)
        assert float(((got - fd).abs() / fd.abs()).max()) <= 5e-3, (hook, got, fd)


def test_two_forwards_one_backward_leave_the_parameters_alone():
    model, clean, corrupt = pair()
    metric = last_logit_diff_metric(model, corrupt, TOKENS)
    calls = []
    model.blocks[0].hook_resid_pre.add_hook(lambda t, hook: calls.append(t.requires_grad))
    try:
        attribution_patching(model, clean, corrupt, metric, hooks=("resid_pre", "attn_out", "mlp_out"))
    finally:
        model.reset_hooks()
    assert calls == [False, True]  # the clean run (no graph), the corrupt run (with its graph)
    assert all(p.grad is None for p in model.parameters())
    # parameters frozen: the graph starts at the first hooked activation and the estimate is unchanged
    full = attribution_patching(model, clean, corrupt, metric, hooks=("attn_out",))
    model.requires_grad_(False)
    try:
        frozen = attribution_patching(model, clean, corrupt, metric, hooks=("attn_out",))
    finally:
        model.requires_grad_(True)
    assert (full.effects["attn_out"] - frozen.effects["attn_out"]).abs().max() <= 1e-6


def test_bad_input():
    model, clean, corrupt = pair()
    metric = last_logit_diff_metric(model, corrupt, TOKENS)
    short = {k: (v[:, :-1] if k != "pixel_values" else v) for k, v in corrupt.items()}
    with pytest.raises(ValueError, match="same shape"):
        attribution_patching(model, clean, short, metric)
    with pytest.raises(ValueError, match="same attention_mask"):
        attribution_patching(model, clean, dict(corrupt, attention_mask=torch.ones_like(corrupt["attention_mask"])),
                             metric)
    with pytest.raises(ValueError, match="not laid out"):
        attribution_patching(model, clean, corrupt, metric, hooks=["blocks.{l}.attn.hook_pattern"])
    with pytest.raises(KeyError, match="no hook point"):
        attribution_patching(model, clean, corrupt, metric, hooks=["blocks.{l}.hook_nothing"])
    with pytest.raises(ValueError, match="one value per batch item"):
        attribution_patching(model, clean, corrupt, lambda logits: logits[:, -1, :2])


# ------------------------------------------------------------------ the trained toy LLaVA
PAIRS = [("red", "blue"), ("green", "yellow"), ("purple", "orange"), ("blue", "green")]


@functools.lru_cache(maxsize=None)
def toy_inputs():
    """toy-llava, clean / corrupt colour questions about the same scenes in the PAIRS' colours, the logit-diff metric."""
    from hooked_vlm import HookedVLM
    from hooked_vlm.toy.data import make_scene
    from hooked_vlm.toy.tasks import ToyEncoder

    model = HookedVLM.from_pretrained("toy-llava")
    enc = ToyEncoder(model.processor)
    n = enc.first_answer_position("colour") + 1

    def inputs(colours):  # the same scene (shape, place, noise) in another colour: seeds fix everything else
        scenes = [make_scene(np.random.default_rng(100 + i), colour=c) for i, c in enumerate(colours)]
        b = enc.batch(scenes, ("colour",))
        return dict(input_ids=b["input_ids"][:, :n], attention_mask=b["attention_mask"][:, :n],
                    pixel_values=b["pixel_values"])

    tokens = torch.tensor([[model.to_single_token(a), model.to_single_token(b)] for a, b in PAIRS])
    clean, corrupt = inputs([a for a, _ in PAIRS]), inputs([b for _, b in PAIRS])
    return model, clean, corrupt, last_logit_diff_metric(model, corrupt, tokens)


@pytest.fixture(scope="module")
def toy_pair():
    return toy_inputs()


def test_toy_estimate_rank_correlates_with_real_patching(toy_pair):
    model, clean, corrupt, metric = toy_pair
    hooks = ("resid_pre", "attn_out", "mlp_out")
    est = attribution_patching(model, clean, corrupt, metric, hooks=hooks)
    ex = exact_patching(model, clean, corrupt, metric, hooks=hooks, chunk=clean["input_ids"].shape[1], progress=False)
    assert float(ex.clean_metric.min()) > 5 and float(ex.corrupt_metric.max()) < -5  # the pairs answer differently
    rho = {h: rank_correlation(est, ex, h) for h in hooks}
    # measured on these 4 pairs: resid_pre 0.79, attn_out 0.88, mlp_out 0.90 (12 pairs, docs/attribution.md:
    # 0.82 / 0.80 / 0.93)
    assert rho["resid_pre"] >= 0.7 and rho["attn_out"] >= 0.7 and rho["mlp_out"] >= 0.8, rho
    # the biggest real effect is at the answering position; the estimate puts its top entry at the same (layer, pos)
    for h in ("resid_pre", "attn_out"):  # (for mlp_out the two top entries swap: layer 1 vs layer 0 at the last position)
        assert int(est.effects[h].sum(0).flatten().argmax()) == int(ex.effects[h].sum(0).flatten().argmax()), h
    # exact_patching batches copies of the corrupt run; one forward per entry gives the same effects
    one = exact_patching(model, clean, corrupt, metric, hooks=("attn_out",), layers=[1], positions=[3, 20, 46],
                         chunk=1, progress=False)
    assert (one.effects["attn_out"][:, 0, [3, 20, 46]] - ex.effects["attn_out"][:, 1, [3, 20, 46]]).abs().max() <= 1e-5


def test_toy_plot_and_frame(toy_pair):
    import matplotlib

    matplotlib.use("Agg")
    model, clean, corrupt, metric = toy_pair
    est = attribution_patching(model, clean, corrupt, metric, hooks=("resid_pre", "mlp_out"))
    fig = est.plot()
    assert [ax.get_title() for ax in fig.axes if ax.get_label() != "<colorbar>"] == [
        f"{h}: patching effect on the metric (linear estimate), metric(patched) - metric(corrupt)"
        for h in ("resid_pre", "mlp_out")]
    assert sum(ax.get_label() == "<colorbar>" for ax in fig.axes) == 2
    assert est.to_grid("mlp_out", 0).shape == (6, 6)
    df = est.to_dataframe()
    assert len(df) == 2 * 4 * 2 * clean["input_ids"].shape[1]
    assert abs(df.loc[df.hook == "mlp_out", "effect"].sum() - float(est.effects["mlp_out"].sum())) <= 1e-4
