"""SAE features on the image (hooked_vlm.saes.features): feature maps and top-activating patches against a hand
computation from a plain cache, and the figures they draw. No sae-lens needed (tiny SAE of its interface)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from hooked_vlm.saes import sae_feature_map, top_activating  # noqa: E402
from tests.tiny_analysis import model_and_hf, random_image  # noqa: E402
from tests.tiny_sae import TinySAE  # noqa: E402

HOOK = "blocks.1.hook_resid_post"
PROMPTS = ["<s> USER: <boi> <image> <eoi> what colour is this ? ASSISTANT: It is", "<s> <boi> <image> <eoi> shape ?"]


@pytest.fixture(scope="module")
def setup():
    model, _ = model_and_hf()
    sae = TinySAE(model.cfg.d_model, HOOK, lossy=True)
    data = [(random_image(i), PROMPTS[i % 2]) for i in range(5)]
    return model, sae, data


def _hand_acts(model, sae, inputs, feature):
    """relu(resid @ W_enc[:, f]) from a plain cache, and its spans."""
    with torch.no_grad():
        _, cache = model.run_with_cache(**inputs, names_filter=[HOOK])
        return torch.relu(cache[HOOK] @ sae.W_enc[:, feature]), cache.spans


def test_feature_map_grid_equals_a_hand_computation_from_a_cache(setup):
    model, sae, data = setup
    inputs = model.prepare_inputs(images=[data[0][0], data[1][0]], text=[data[0][1], data[1][1]], padding_side="left")
    fmap = sae_feature_map(model, sae, inputs, feature=[3, 7])
    assert fmap.hook_name == f"{HOOK}.hook_sae_acts_post"
    for f in (3, 7):
        acts, spans = _hand_acts(model, sae, inputs, f)
        for b in range(2):
            grid = fmap.to_grid(feature=f, batch=b)
            hand = torch.full(grid.shape, float("nan"))
            for p in spans.positions("image", b).tolist():
                _, _, r, c = spans.grid[b, p].tolist()
                hand[r, c] = acts[b, p]
            assert not hand.isnan().any() and (grid - hand).abs().max() <= 1e-5
    df = fmap.to_dataframe()
    assert len(df) == 2 * int(spans.mask("image").sum()) and set(df.feature) == {3, 7}
    with pytest.raises(ValueError, match="d_sae=64"):
        sae_feature_map(model, sae, inputs, feature=64)


def test_feature_map_plot_names_the_feature_and_has_colour_bars_and_labelled_axes(setup):
    model, sae, data = setup
    image, prompt = data[0]
    fig = sae_feature_map(model, sae, model.prepare_inputs(images=image, text=prompt), feature=[1, 2]).plot(image)
    titled = [ax for ax in fig.axes if ax.get_title().startswith("feature ")]
    assert [ax.get_title() for ax in titled] == ["feature 1", "feature 2"]
    assert all(ax.get_xlabel() == "patch column" and ax.get_ylabel() == "patch row" for ax in titled)
    assert len(fig.axes) == 4 and HOOK in fig._suptitle.get_text()  # two panels + two colour bars


@pytest.mark.parametrize("per_example", [1, None])
def test_top_activating_equals_a_hand_ranking_over_the_dataset(setup, per_example):
    model, sae, data = setup
    f, k = 5, 6  # k > the 5 examples: one patch per example can fill only 5
    top = top_activating(model, sae, data, feature=f, k=k, batch_size=3, per_example=per_example, progress=False)
    pairs = []  # (activation, example, row, col) of every image patch, computed one example at a time
    for i, (image, prompt) in enumerate(data):
        acts, spans = _hand_acts(model, sae, model.prepare_inputs(images=image, text=prompt), f)
        cand = [(float(acts[0, p]), i, *spans.grid[0, p, 2:].tolist()) for p in spans.positions("image").tolist()]
        pairs += sorted(cand, reverse=True)[:per_example] if per_example else cand
    pairs.sort(key=lambda t: -t[0])
    assert len(top.values) == (len(data) if per_example == 1 else k)
    assert (top.values - torch.tensor([p[0] for p in pairs[:k]])).abs().max() <= 1e-5
    assert top.examples.tolist() == [p[1] for p in pairs[:k]]
    assert top.cells[:, 2:].tolist() == [[p[2], p[3]] for p in pairs[:k]]
    assert all(g[r, c] == v for g, (_, _, r, c), v in zip(top.grids, top.cells.tolist(), top.values.tolist()))
    if per_example == 1:
        assert sorted(top.examples.tolist()) == list(range(len(data)))


def test_top_activating_contact_sheet_outlines_the_patch(setup):
    model, sae, data = setup
    top = top_activating(model, sae, iter(data), feature=5, k=6, batch_size=4, per_example=None,
                         progress=False)  # a plain iterator
    fig = top.plot(ncols=3)
    panels = [ax for ax in fig.axes if ax.get_title().startswith("#")]
    assert len(panels) == 6 and "feature 5" in fig._suptitle.get_text()
    assert any(r != c for _, _, r, c in top.cells.tolist())  # so a (row, col) swap would show
    for ax, (_, _, r, c) in zip(panels, top.cells.tolist()):
        (rect,) = ax.patches
        assert rect.get_xy() == (c, r) and rect.get_width() == 1 and rect.get_height() == 1
        assert ax.get_xlabel() == "patch column"
    assert any(ax.get_ylabel() == "feature 5 activation" for ax in fig.axes)  # the shared colour bar
    assert top.images[0] is data[int(top.examples[0])][0]


def test_feature_map_at_an_overridden_hook_leaves_an_attached_sae_in_place(setup):
    model, sae, data = setup
    image, prompt = data[2]
    inputs = model.prepare_inputs(images=image, text=prompt)
    attached = TinySAE(model.cfg.d_model, HOOK, lossy=True, seed=9)
    elsewhere = TinySAE(model.cfg.d_model, "blocks.0.hook_resid_post", lossy=True)  # its own metadata names another hook
    model.add_sae(attached, spans="image")
    try:
        with torch.no_grad():
            before = model(inputs)
            fmap = sae_feature_map(model, elsewhere, inputs, feature=4, hook_name=HOOK)
            after = model(inputs)
        assert model.acts_to_saes == {HOOK: attached} and torch.equal(before, after)
    finally:
        model.reset_saes()
    acts, spans = _hand_acts(model, elsewhere, inputs, 4)  # the plain activation at HOOK, encoded by `elsewhere`
    assert (fmap.values[0, 0][spans.mask("image")[0]] - acts[0][spans.mask("image")[0]]).abs().max() <= 1e-5
