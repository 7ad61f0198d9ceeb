"""The interactive views in a real browser (headless Chromium via Playwright, see tests/browser.py): hover a patch,
the panel shows the Python result's top tokens and probabilities; the slider recolours by the chosen layer; no JS
console errors, no network. A screenshot of each view is saved under the test's tmp dir."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hooked_vlm.toy.data import GRID, make_scene, prompt
from tests.browser import Page, cell_values, check_attention_weight, check_lens_page, check_lens_readout, hover_patch, launch


@pytest.fixture(scope="module")
def browser():
    yield from launch()


@pytest.fixture(scope="module")
def llava():
    from hooked_vlm import HookedVLM

    return HookedVLM.from_pretrained("toy-llava")


@pytest.fixture(scope="module")
def scene_inputs(llava):
    scene = make_scene(np.random.default_rng(5), colour="blue", shape="square")
    return scene, llava.prepare_inputs(images=scene.pil(), text=prompt("colour"))


def test_lens_view(browser, llava, scene_inputs, tmp_path):
    from hooked_vlm.analysis import logit_lens
    from hooked_vlm.viz import lens_view_for

    scene, inputs = scene_inputs
    lens = logit_lens(llava, inputs, span="all", targets=["blue"], vocab="all")
    path = lens_view_for(llava, inputs, scene.image, targets=["blue"]).save(tmp_path / "lens.html")
    page = Page(browser, path)
    r, c = divmod(scene.object_patches(0)[0], GRID)
    check_lens_page(page, lens, (r, c))
    # the prompt strip: hovering the answering position shows its own readout
    last = int(inputs["input_ids"].shape[1] - 1)
    page.page.hover(f".chip[data-pos='{last}']")
    assert f"position {last}" in page.text("#panel-title")
    check_lens_readout(page, lens, int((lens.positions == last).nonzero()[0, 0]))
    # token search: colour by 'green' where it is in the top k
    page.page.fill("#search", "green")
    page.page.press("#search", "Enter")
    assert page.page.input_value("#colour-by") == "search"
    li = len(lens.layers) - 1
    page.slider("#layer", li)
    gid = llava.to_single_token("green")
    shown = cell_values(page)
    for row, (rr, cc) in enumerate(lens.spans.grid[0, lens.positions, 2:].tolist()):
        if rr < 0:
            continue
        hit = (lens.top_ids[li, row] == gid).nonzero()
        if len(hit):
            assert abs(shown[(rr, cc)][0] - float(lens.top_probs[li, row, int(hit[0, 0])])) <= 1 / 65534
        else:
            assert shown[(rr, cc)][0] != shown[(rr, cc)][0]  # NaN: not in the top k there
    page.finish(tmp_path / "lens.png")


def test_lens_show_image_span_and_native_vocab_toggle(browser, llava, scene_inputs, tmp_path):
    from hooked_vlm import HookedVLM
    from hooked_vlm.analysis import logit_lens

    scene, inputs = scene_inputs
    lens = logit_lens(llava, inputs, targets=["blue"])  # default span: image tokens only
    page = Page(browser, lens.to_html(tmp_path / "show.html", image=scene.image))
    check_lens_readout(page, lens, hover_patch(page, lens, (2, 3)))
    assert "no-readout" in page.attr(".chip[data-pos='1']", "class")  # prompt tokens are outside the span
    page.finish(tmp_path / "show.png")

    native = HookedVLM.from_pretrained("toy-chameleon")
    n_inputs = native.prepare_inputs(images=scene.pil(), text=prompt("colour"))
    text = logit_lens(native, n_inputs, span="all", vocab="text", targets=["blue"])
    image = logit_lens(native, n_inputs, span="all", vocab="image", targets=["blue"])
    page = Page(browser, text.to_html(tmp_path / "native.html", image=scene.image, others=[image]))
    row = hover_patch(page, text, (1, 1))
    check_lens_readout(page, text, row)
    page.page.check("#vocab-image")
    assert "image vocabulary" in page.text("#panel-title")
    check_lens_readout(page, image, row)
    assert page.text("#readout tr[data-layer='0'] td[data-k='0'] .t").startswith("IMGIMG")  # an image-code token
    page.finish(tmp_path / "native.png")


def test_attention_view(browser, llava, scene_inputs, tmp_path):
    from hooked_vlm.viz import attention_view

    scene, inputs = scene_inputs
    _, cache = llava.run_with_cache(**inputs, names_filter=lambda n: n.endswith("hook_pattern"))
    page = Page(browser, attention_view(llava, inputs, image=scene.image).save(tmp_path / "attention.html"))
    spans = cache.spans
    key = int(spans.positions("image")[14])
    check = lambda layer, head, query: check_attention_weight(page, cache, layer, head, query, key)
    last = int(spans.positions("last")[0])
    check(1, -1, last)
    page.page.click("#heads .head[data-head='2']")
    check(1, 2, last)
    page.slider("#layer", 0)
    check(0, 2, last)
    word = int(spans.positions("text")[-4])  # a prompt token after the image becomes the query
    page.page.click(f".chip[data-pos='{word}']")
    assert "query" in page.attr(f".chip[data-pos='{word}']", "class")
    check(0, 2, word)
    page.finish(tmp_path / "attention.png")


def test_frame_and_prediction_views(browser, llava, scene_inputs, tmp_path):
    from hooked_vlm.analysis import attention_flow, attention_knockout, patching_sweep, span_ablation
    from hooked_vlm.viz import compare_predictions

    scene, inputs = scene_inputs
    other = make_scene(np.random.default_rng(6), colour="red", shape="circle")
    src = llava.prepare_inputs(images=other.pil(), text=prompt("colour"))
    sweep = patching_sweep(llava, inputs, src, [llava.to_single_token("red"), llava.to_single_token("blue")], span="image")
    page = Page(browser, sweep.save_view(tmp_path / "patching.html"))
    page.page.hover("#chart-logit_diff circle[data-layer='1']")
    assert f"logit diff {float(sweep.loc[sweep.layer == 1, 'logit_diff'].iloc[0]):.3f}" in page.text("#readout")
    page.finish(tmp_path / "patching.png")

    flow = attention_flow(llava, inputs, query_span="last")
    page = Page(browser, flow.save_view(tmp_path / "flow.html"))
    row = flow[(flow.layer == 0) & (flow.role == "image_other")].iloc[0]
    page.page.hover("#chart rect[data-layer='0'][data-role='image_other']")
    assert f"share {row.share:.3f}" in page.text("#readout")
    page.finish(tmp_path / "flow.png")

    obj = torch.zeros_like(inputs["input_ids"], dtype=torch.bool)
    img = llava.to_str_tokens(inputs)
    for p in scene.object_patches(0):
        obj[0, img.index(f"<img {p // GRID},{p % GRID}>")] = True
    runs = {"object zeroed": span_ablation(llava, inputs, span=obj, how="zero"),
            "image -> last knocked out": attention_knockout(llava, inputs, src="image", dst="last")}
    cmp = compare_predictions(llava, inputs, runs, highlight=obj, image=scene.image)
    page = Page(browser, cmp.to_html(tmp_path / "predictions.html"))
    page.page.hover(".hv-table tbody tr[data-index='2']")
    assert page.attr("#bars-svg", "data-run") == "image -> last knocked out"
    probs = runs["image -> last knocked out"][0, -1].float().softmax(-1)
    top = probs.topk(3)
    for i, p in zip(top.indices.tolist(), top.values.tolist()):
        bar = page.page.locator(f"#bars-svg rect[data-token='{llava.tokenizer.convert_ids_to_tokens(i)}']")
        assert abs(float(bar.get_attribute("data-prob")) - p) <= 1e-6
    page.page.hover(".hv-table tbody tr[data-index='1']")
    assert page.page.locator(".grid-wrap .cell").count() == len(scene.object_patches(0))
    page.finish(tmp_path / "predictions.png")
