"""``hooked-vlm demo`` (hooked_vlm.demo): the report of the shipped toys writes every figure and links its interactive
views, which show the Python lens of the demo's scene and the cache's attention in a browser."""

from __future__ import annotations

import numpy as np
import pytest

from hooked_vlm.toy.data import make_scene, prompt


@pytest.fixture(scope="module")
def model():
    from hooked_vlm import HookedVLM

    return HookedVLM.from_pretrained("toy-llava")


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    from hooked_vlm.cli import main

    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out), "--n", "40"]) == 0
    return out


def test_demo_report(demo_dir):
    from PIL import Image

    tmp_path = demo_dir
    html = (tmp_path / "report.html").read_text()
    figures = ("logit_lens_grid", "attention_flow", "ablation", "knockout", "narrow_gate", "modality_separation")
    for name in figures:
        png = tmp_path / f"{name}.png"
        assert png.stat().st_size > 5000, name
        img = np.asarray(Image.open(png).convert("L"), dtype=float)
        assert img.std() > 10 and min(img.shape) > 150, name  # a real drawing, not a blank canvas
        assert f'alt="{name}"' in html
    assert html.count("data:image/png;base64,") == len(figures)
    assert "The narrow gate on toys" in html and "toy-chameleon-gen" in html
    assert "Held-out accuracy" in html and "colour" in html
    assert 'href="lens_view.html"' in html and 'href="lens_view_attention.html"' in html


def test_demo_views_in_browser(demo_dir, model):
    """The demo's interactive views (tests/browser.py, as tests/test_viz_browser.py checks them): the lens panel
    shows the Python lens of the demo's scene, the slider recolours, the attention readout equals the cache."""
    from hooked_vlm.analysis import logit_lens
    from hooked_vlm.demo import DEMO_SEED
    from hooked_vlm.toy.data import GRID
    from tests.browser import Page, check_attention_weight, check_lens_page, launch

    scene = make_scene(np.random.default_rng(DEMO_SEED), colour="blue", shape="circle")  # the demo's scene
    inputs = model.prepare_inputs(images=scene.pil(), text=prompt("colour"))
    lens = logit_lens(model, inputs, span="all", targets=["blue"], vocab="all")
    _, cache = model.run_with_cache(**inputs, names_filter=lambda n: n.endswith("hook_pattern"))
    for browser in launch():
        page = Page(browser, demo_dir / "lens_view.html")
        check_lens_page(page, lens, divmod(scene.object_patches(0)[0], GRID))
        page.finish(demo_dir / "lens_view.png")
        page = Page(browser, demo_dir / "lens_view_attention.html")
        last, key = int(cache.spans.positions("last")[0]), int(cache.spans.positions("image")[scene.object_patches(0)[0]])
        check_attention_weight(page, cache, model.cfg.n_layers - 1, -1, last, key)
        page.finish(demo_dir / "lens_view_attention.png")
