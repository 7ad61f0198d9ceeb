"""Transcoder features over a dataset (``hooked_vlm.analysis.graph.top_activating``): the ranking equals a hand
ranking of the encoder's activations, the maps are the feature over each image's patch grid, the figure has its
title, labelled axes and colour bar; on toy-llava with its shipped transcoders (needs sae-lens to load them) a
colour feature chosen on some scenes has its top images of that colour on other scenes."""

from __future__ import annotations

from collections import Counter

import matplotlib
import numpy as np
import pytest
import torch

from hooked_vlm.analysis.graph import top_activating, transcoder_feature_acts
from hooked_vlm.toy.data import make_scenes, prompt
from tests import tiny_transcoders as tt

matplotlib.use("Agg")


def scene_max(model, ts, scenes, layer: int) -> torch.Tensor:
    """[n_scenes, d_sae] each feature's largest activation over the scene's image patches (one forward per 60)."""
    out = []
    for i in range(0, len(scenes), 60):
        chunk = scenes[i: i + 60]
        inputs = model.prepare_inputs(images=[s.pil() for s in chunk], text=[prompt("colour")] * len(chunk))
        acts, spans, _ = transcoder_feature_acts(model, ts, inputs, layer)
        on_image = (spans.grid[..., 2] >= 0)[..., None]
        out.append(torch.where(on_image, acts, torch.tensor(-1.0)).amax(1))
    return torch.cat(out)


@pytest.fixture(scope="module")
def toy():
    from hooked_vlm import HookedVLM

    return HookedVLM.from_pretrained("toy-llava")


def test_feature_acts_are_the_graph_nodes_activations(toy):
    from hooked_vlm.analysis.graph import attribution_graph

    ts = tt.random_set(toy, d_sae=32, jumprelu=True)
    s = make_scenes(1, seed=4)[0]
    inputs = toy.prepare_inputs(images=s.pil(), text=prompt("colour"))
    g = attribution_graph(toy, inputs, ts, batch_size=64)
    assert g.n_features > 100
    for layer in range(2):
        acts, _, _ = transcoder_feature_acts(toy, ts, inputs, layer)
        rows = g.features[:, 0] == layer
        _, pos, feat = g.features[rows].T
        assert (acts[0, pos, feat] - g.activations[rows]).abs().max() <= 1e-5
        # and every feature the graph lacks is inactive there (no max_feature_nodes cut here)
        active = acts[0] > 0
        assert int(active.sum()) == int(rows.sum())


def test_ranking_maps_and_figure_equal_the_encoder(toy):
    ts = tt.random_set(toy, d_sae=32, jumprelu=True)
    scenes = make_scenes(13, seed=3)
    data = [(s.pil(), prompt("colour")) for s in scenes]
    layer, k = 1, 5
    best = scene_max(toy, ts, scenes, layer)
    feature = int(torch.argmax((best > 0).sum(0)))  # the feature that fires in the most scenes
    top = top_activating(toy, ts, data, layer, feature, k=k, batch_size=4, progress=False)
    want = best[:, feature].sort(descending=True)
    assert top.examples.tolist() == want.indices[:k].tolist()
    assert (top.values - want.values[:k]).abs().max() <= 1e-6
    for i in range(k):  # each map: the feature at that scene's patches, its top cell the maximum
        s = scenes[int(top.examples[i])]
        inputs = toy.prepare_inputs(images=s.pil(), text=prompt("colour"))
        acts, spans, hook = transcoder_feature_acts(toy, ts, inputs, layer, feature)
        grid = spans.to_grid(acts[0], image=0, batch=0)
        assert grid.shape == (6, 6) and (top.grids[i] - grid).abs().max() <= 1e-6
        _, _, r, c = top.cells[i].tolist()
        assert float(grid[r, c]) == float(grid.max())
        assert top.images[i] is data[int(top.examples[i])][0]  # the dataset's own picture, drawn under the map
    assert hook == "blocks.1.ln2.hook_normalized" and top.hook_name.startswith(hook)
    # no cap per example: the top k patches may come from one scene, still the k largest patch activations
    many = top_activating(toy, ts, data, layer, feature, k=7, batch_size=5, per_example=None, progress=False)
    assert float(many.values[0]) == float(top.values[0]) and bool((many.values[:-1] >= many.values[1:]).all())
    fig = top.plot()
    assert f"transcoder feature {feature}" in fig._suptitle.get_text()
    panels = [a for a in fig.axes if a.get_label() != "<colorbar>"][:k]
    assert all(a.get_xlabel() == "patch column" and a.get_ylabel() == "patch row" for a in panels)
    assert [a for a in fig.axes if a.get_label() == "<colorbar>"][0].get_ylabel() == f"feature {feature} activation"
    with pytest.raises(ValueError, match="out of range"):
        top_activating(toy, ts, data, layer, 32, progress=False)
    with pytest.raises(ValueError, match="layer 2 out of range"):
        top_activating(toy, ts, data, 2, 0, progress=False)
    with pytest.raises(ValueError, match="per_example"):
        top_activating(toy, ts, data, layer, feature, per_example=0, progress=False)


def test_toy_colour_feature_tops_are_that_colour(toy):
    pytest.importorskip("sae_lens")
    from hooked_vlm.analysis.graph import TranscoderSet
    from hooked_vlm.toy import transcoders as toy_tc

    ts = TranscoderSet.from_saelens(toy_tc.load())
    layer, k = 0, 10
    # choose: the layer-0 feature whose top-10 scenes (seed 1) are most one colour
    chosen = make_scenes(120, seed=1)
    colours = np.array([s.objects[0].colour for s in chosen])
    best = scene_max(toy, ts, chosen, layer)
    purity = {}
    for f in range(ts.d_sae):
        top = best[:, f].argsort(descending=True)[:k].numpy()
        if float(best[top[-1], f]) > 0:
            purity[f] = Counter(colours[top]).most_common(1)[0]
    feature = max(purity, key=lambda f: purity[f][1])
    colour, n_chosen = purity[feature]
    # measure on other scenes (seed 2), through top_activating
    held = make_scenes(180, seed=2)
    top = top_activating(toy, ts, [(s.pil(), prompt("colour")) for s in held], layer, feature, k=k, batch_size=60,
                         progress=False)
    got = [held[int(e)].objects[0].colour for e in top.examples]
    cells = [(int(r) * 6 + int(c), held[int(e)].object_patches(0)) for e, (_, _, r, c) in zip(top.examples, top.cells.tolist())]
    on_object = sum(cell in obj for cell, obj in cells)
    after_object = sum(cell > max(obj) for cell, obj in cells)
    print(f"feature {feature} of layer {layer}: top {k} of 120 scenes {n_chosen}/{k} {colour}; of 180 other scenes "
          f"{got.count(colour)}/{k} {colour} ({got}); top patch on the object in {on_object}/{k}, after the object's "
          f"last patch (raster order) in {after_object}/{k}; top values {top.values.tolist()}")
    # measured: feature 471 (blue), 10/10 on the choosing scenes and 10/10 on the held-out ones
    assert n_chosen == k and got.count(colour) >= 9
    # measured: the top patch is off the object in 10/10 and after its last patch in raster order in 9/10: the
    # layer-0 MLP reads the colour that causal attention has carried from the object into later (background) patches
    assert on_object <= 2 and after_object >= 8
