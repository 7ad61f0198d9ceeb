"""Headless Chromium for the view tests (Playwright for Python pointed at the system browser).

No browser (or no playwright) -> the tests skip with the reason, unless HOOKED_VLM_REQUIRE_BROWSER=1 (set by
.ci/run, which installs Debian's chromium) -> they fail. Playwright's own browser download is never used.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest

REQUIRE = os.environ.get("HOOKED_VLM_REQUIRE_BROWSER") == "1"
PROB_TOL = 0.0005 + 1 / 65534  # a probability shown with 3 decimals, stored as uint16 / 65534


def chromium_path() -> str | None:
    return os.environ.get("HOOKED_VLM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _unavailable(reason: str) -> None:
    if REQUIRE:
        pytest.fail(f"HOOKED_VLM_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


def launch() -> Iterator[Any]:
    """Yield one headless Chromium browser (use as a module-scoped fixture body)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install playwright==1.65.2; it is in the dev extra)")
    path = chromium_path()
    if path is None:
        _unavailable("no chromium binary on PATH (Debian: apt-get install -y chromium; or set HOOKED_VLM_CHROMIUM)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()


class Page:
    """A page on one view file that records console errors and uncaught exceptions."""

    def __init__(self, browser: Any, path: Path):
        self.errors: list[str] = []
        self.page = browser.new_page(viewport={"width": 1150, "height": 820})
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.route("**/*", self._offline)
        self.requests: list[str] = []
        self.page.goto(Path(path).resolve().as_uri())

    def _offline(self, route: Any) -> None:  # a view must need nothing but its own file
        url = route.request.url
        if url.startswith("file://") or url.startswith("data:"):
            route.continue_()
        else:
            self.requests.append(url)
            route.abort()

    def slider(self, selector: str, value: int) -> None:
        self.page.eval_on_selector(selector, "(e, v) => { e.value = v; e.dispatchEvent(new Event('input')); }", value)

    def text(self, selector: str) -> str:
        return self.page.locator(selector).inner_text()

    def attr(self, selector: str, name: str) -> str | None:
        return self.page.locator(selector).get_attribute(name)

    def finish(self, screenshot: Path) -> None:
        """Screenshot, then: no console errors, no network requests."""
        self.page.screenshot(path=str(screenshot), full_page=True)
        assert screenshot.stat().st_size > 5000, "blank screenshot"
        assert not self.errors, f"JS console errors: {self.errors}"
        assert not self.requests, f"the view asked the network for {self.requests}"
        self.page.close()


def check_lens_readout(page: Page, lens: Any, row: int, vocab_index: int = 0) -> None:
    """The panel (#readout) shows, at every layer, the top-k tokens and probabilities of lens row ``row``."""
    tok = lens.tokenizer
    for li, layer in enumerate(lens.layers):
        for j in range(lens.top_ids.shape[-1]):
            cell = f"#readout tr[data-layer='{layer}'] td[data-k='{j}']"
            want = tok.convert_ids_to_tokens(int(lens.top_ids[li, row, j]))
            assert page.text(f"{cell} .t") == want, (layer, j)
            shown = float(page.text(f"{cell} .p"))
            assert abs(shown - float(lens.top_probs[li, row, j])) <= PROB_TOL, (layer, j, shown)


def check_lens_page(page: Page, lens: Any, cell: tuple[int, int]) -> None:
    """Hover patch ``cell`` -> its readout; the slider recolours the grid by each layer's first-target probability."""
    pos = lens.spans.grid[0, lens.positions, 2:]
    row = int(((pos[:, 0] == cell[0]) & (pos[:, 1] == cell[1])).nonzero()[0, 0])
    page.page.hover(f".cell[data-row='{cell[0]}'][data-col='{cell[1]}']")
    assert f"patch ({cell[0]}, {cell[1]})" in page.text("#panel-title")
    check_lens_readout(page, lens, row)
    page.page.select_option("#colour-by", "p:0")
    colours = set()
    for li, layer in enumerate(lens.layers):
        page.slider("#layer", li)
        assert f"layer {layer}" in page.text("#legend .label")
        for r in range(len(lens.positions)):
            r_, c_ = pos[r].tolist()
            if r_ < 0:
                continue
            shown = float(page.attr(f".cell[data-row='{r_}'][data-col='{c_}']", "data-value"))
            assert abs(shown - float(lens.target_probs[li, r, 0])) <= 1 / 65534, (layer, r)
        colours.add(page.page.eval_on_selector(f".cell[data-row='{cell[0]}'][data-col='{cell[1]}']",
                                               "e => e.style.background"))
    assert len(colours) > 1, "moving the layer slider did not recolour the patch"
