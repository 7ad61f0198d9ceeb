"""The attribution-graph view in a real browser (headless Chromium, tests/browser.py): on toy-llava with random
transcoders (no sae-lens needed), clicking a feature lights exactly the patches, tokens and logits the adjacency
connects it to, with the adjacency's weights; with nothing selected the patches show the inputs' influence; no JS
console errors, no network."""

from __future__ import annotations

import base64
import functools

import numpy as np
import pytest
import torch

from hooked_vlm.toy.data import make_scene, prompt
from tests import tiny_transcoders as tt
from tests.browser import Page, launch

NODE_THRESHOLD = 0.95


def close(shown: float, want: float) -> bool:
    """The view carries weights as float32: equal to the float32 of the adjacency up to its rounding."""
    return abs(shown - want) <= 2.0 ** -23 * abs(want) + 1e-30


@pytest.fixture(scope="module")
def browser():
    yield from launch()


@functools.lru_cache(maxsize=None)
def toy_graph():
    from hooked_vlm import HookedVLM
    from hooked_vlm.analysis.graph import attribution_graph

    model = HookedVLM.from_pretrained("toy-llava")
    scene = make_scene(np.random.default_rng(5), colour="blue", shape="square")
    inputs = model.prepare_inputs(images=scene.pil(), text=prompt("colour"))
    # outputs large enough that features (not only error nodes) survive the pruning
    ts = tt.random_set(model, d_sae=64, out_scale=2.0)
    return scene, attribution_graph(model, inputs, ts, max_feature_nodes=200, batch_size=64)


def cells(page: Page) -> dict[int, tuple[float, bool]]:
    """graph node of every patch cell -> (data-value, lit)."""
    rows = page.page.eval_on_selector_all(
        "#graph-image .cell", "cs => cs.map(c => [+c.dataset.node, +c.dataset.value, c.classList.contains('lit')])")
    return {n: (v, lit) for n, v, lit in rows}


def svg_nodes(page: Page, kind: str) -> dict[int, tuple[float, float, bool]]:
    """graph node -> (data-in, data-out, lit) of the drawn nodes of one kind."""
    rows = page.page.eval_on_selector_all(
        f"svg#graph .node.{kind}", "ns => ns.map(n => [+n.dataset.node, +n.getAttribute('data-in'), "
        "+n.getAttribute('data-out'), n.classList.contains('lit')])")
    return {n: (a, b, lit) for n, a, b, lit in rows}


def test_clicking_a_feature_lights_what_feeds_it_and_what_it_drives(browser, tmp_path):
    scene, g = toy_graph()
    page = Page(browser, g.save_html(tmp_path / "graph.html", scene.image, node_threshold=NODE_THRESHOLD))
    A = g.adjacency.float()
    kept = g.prune(NODE_THRESHOLD, 0.98).node_mask
    shown_features = sorted(svg_nodes(page, "feature"))
    assert shown_features == [i for i in range(g.n_features) if bool(kept[i])] and len(shown_features) >= 10

    # nothing selected: each patch shows its input's influence on the logits
    infl = g.influence().float()
    patches = cells(page)
    assert len(patches) == 36 and not any(lit for _, lit in patches.values())
    for n, (v, _) in patches.items():
        assert close(v, float(infl[n])), (n, v, float(infl[n]))

    # the drawn feature at an image position with the most patch inputs: only earlier patches can feed it (causal)
    inputs = torch.arange(g.input_offset, g.logit_offset)
    on_image = g.spans.grid[0, :, 2] >= 0
    feature = max((n for n in shown_features if bool(on_image[g.features[n, 1]])),
                  key=lambda n: int((A[n, inputs][on_image] != 0).sum()))
    page.page.click(f"svg#graph .node.feature[data-node='{feature}']")
    assert page.attr("#selected-label", "data-node") == str(feature)
    patches = cells(page)
    lit = {n for n, (_, on) in patches.items() if on}
    want = {int(inputs[p]) for p in range(g.n_pos) if bool(on_image[p]) and float(A[feature, inputs[p]]) != 0.0}
    assert lit == want and 0 < len(lit) < 36, (sorted(lit), sorted(want))
    for n, (v, _) in patches.items():
        assert close(v, float(A[feature, n])), (n, v, float(A[feature, n]))
    # text tokens: their edge into the feature; logits and later features: the feature's edge into them
    for n, (a, b, on) in svg_nodes(page, "input").items():
        assert close(a, float(A[feature, n])) and b == 0.0 and on == (float(A[feature, n]) != 0.0), n
    logits = svg_nodes(page, "logit")
    assert sorted(logits) == list(range(g.logit_offset, g.adjacency.shape[0]))
    for n, (a, b, on) in logits.items():
        assert a == 0.0 and close(b, float(A[n, feature])) and on == (float(A[n, feature]) != 0.0), n
    for n, (a, b, _) in {**svg_nodes(page, "feature"), **svg_nodes(page, "error")}.items():
        if n != feature:
            assert close(a, float(A[feature, n])) and close(b, float(A[n, feature])), n
    n_lines = page.page.locator("#edges line").count()
    drawn = set(svg_nodes(page, "feature")) | set(svg_nodes(page, "error")) | set(svg_nodes(page, "input")) | set(logits)
    assert n_lines == sum(1 for n in drawn if float(A[feature, n]) != 0.0) + sum(1 for n in drawn if float(A[n, feature]) != 0.0)

    # hover: details of the node; a click on a patch selects its input node; the background clears the selection
    page.page.hover(f"svg#graph .node.feature[data-node='{shown_features[0]}']")
    layer, pos, feat = g.features[shown_features[0]].tolist()
    assert f"feature {feat} of layer {layer} at position {pos}" in page.text("#tooltip")
    r, c = g.spans.grid[0, int(on_image.nonzero()[3]), 2:].tolist()
    page.page.click(f"#graph-image .cell[data-row='{r}'][data-col='{c}']")
    assert page.attr("#selected-label", "data-node") == str(g.input_node(int(on_image.nonzero()[3])))
    assert "direct effect of the selected node" in page.text("#legend-out")
    page.page.click("#clear")
    assert page.attr("#selected-label", "data-node") == "" and "influence" in page.text("#legend-in")
    page.finish(tmp_path / "graph.png")


def test_payload_is_the_adjacency_between_drawn_nodes():
    """No browser: the embedded arrays are the pruned node set (plus every input and logit) and every nonzero
    adjacency entry between them, as float32."""
    _, g = toy_graph()
    data = g.show(node_threshold=NODE_THRESHOLD).data
    arr = lambda key, dt: np.frombuffer(base64.b64decode(data[key]), dtype=dt)  # noqa: E731
    node = arr("node", "<i4")
    kept = g.prune(NODE_THRESHOLD, 0.98).node_mask
    kept[g.input_offset:] = True
    assert node.tolist() == kept.nonzero()[:, 0].tolist()
    kinds = ["feature", "error", "input", "logit"]
    assert [kinds[k] for k in arr("node_kind", "u1")] == [g.kind(int(i)) for i in node]
    table = g.node_table().set_index("node").loc[node]
    assert (arr("pos", "<i4") == table.position.to_numpy()).all()
    assert (arr("layer", "<i4") == table.layer.to_numpy()).all()
    src, dst, w = arr("src", "<i4"), arr("dst", "<i4"), arr("weight", "<f4")
    idx = torch.tensor(node.tolist())
    sub = g.adjacency[idx][:, idx].float()
    assert len(w) == data["n_edges"] == int((sub != 0).sum()) > 100
    assert np.array_equal(w, sub[dst, src].numpy()) and bool((torch.as_tensor(w) != 0).all())


def test_max_edges_keeps_the_strongest(browser, tmp_path):
    scene, g = toy_graph()
    view = g.show(scene.image, node_threshold=NODE_THRESHOLD, max_edges=50)
    assert view.data["n_edges"] > 50
    page = Page(browser, view.save(tmp_path / "few_edges.html"))
    assert f"{view.data['n_edges'] - 50} weakest left out" in page.text("#app")
    page.finish(tmp_path / "few_edges.png")
    w = np.frombuffer(base64.b64decode(view.data["weight"]), dtype="<f4")
    drawn = g.prune(NODE_THRESHOLD, 0.98).node_mask | (torch.arange(g.adjacency.shape[0]) >= g.input_offset)
    fiftieth = g.adjacency[drawn][:, drawn].float().abs().flatten().topk(50).values[-1]
    assert len(w) == 50 and float(np.abs(w).min()) >= float(fiftieth)
    with pytest.raises(ValueError, match="max_edges"):
        g.show(max_edges=0)
