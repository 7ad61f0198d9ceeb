"""Regenerate docs/lens_show.png: ``lens.show()`` on the shipped toy LLaVA, opened in headless Chromium.

    python docs/screenshot_lens_show.py            # needs playwright (dev extra) and /usr/bin/chromium

The view is the one the README and docs/getting_started.md show; a patch on the object is hovered and the
grid is coloured by p('blue') at the output layer.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

OUT = Path(__file__).with_name("lens_show.png")


def main(chromium: str = "/usr/bin/chromium") -> Path:
    from playwright.sync_api import sync_playwright

    from hooked_vlm import HookedVLM
    from hooked_vlm.analysis import logit_lens
    from hooked_vlm.toy.data import GRID, make_scene, prompt

    model = HookedVLM.from_pretrained("toy-llava")
    scene = make_scene(np.random.default_rng(5), colour="blue", shape="square")
    inputs = model.prepare_inputs(images=scene.pil(), text=prompt("colour"))
    lens = logit_lens(model, inputs, span="all", targets=["blue"])
    page_file = lens.to_html(Path(tempfile.mkdtemp()) / "lens.html", image=scene.image)
    r, c = divmod(scene.object_patches(0)[0], GRID)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1080, "height": 640})
        page.goto(page_file.resolve().as_uri())
        page.select_option("#colour-by", "p:0")
        page.hover(f".cell[data-row='{r}'][data-col='{c}']")
        page.screenshot(path=str(OUT), clip={"x": 0, "y": 0, "width": 1080, "height": 640})
        browser.close()
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e3:.0f} kB)")
    return OUT


if __name__ == "__main__":
    main(*sys.argv[1:])
