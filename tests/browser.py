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
    given = os.environ.get("HOOKED_VLM_CHROMIUM")
    if given:
        return given if os.access(given, os.X_OK) else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


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
        _unavailable("no chromium binary (HOOKED_VLM_CHROMIUM, else chromium on PATH; Debian: apt-get install -y chromium)")
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


READOUT_JS = """rows => rows.map(tr => [+tr.dataset.layer,
    [...tr.querySelectorAll('td[data-k]')].map(td => [td.querySelector('.t').textContent, td.querySelector('.p').textContent])])"""
CELLS_JS = "cells => cells.map(e => [+e.dataset.row, +e.dataset.col, e.dataset.value, e.style.background])"


def check_lens_readout(page: Page, lens: Any, row: int) -> None:
    """The panel (#readout) shows, at every layer, the top-k tokens and probabilities of lens row ``row``."""
    shown = dict(page.page.eval_on_selector_all("#readout tr[data-layer]", READOUT_JS))
    assert sorted(shown) == sorted(lens.layers)
    for li, layer in enumerate(lens.layers):
        want = lens.tokenizer.convert_ids_to_tokens(lens.top_ids[li, row].tolist())
        assert [t for t, _ in shown[layer]] == want, layer
        for (_, p), q in zip(shown[layer], lens.top_probs[li, row].tolist()):
            assert abs(float(p) - q) <= PROB_TOL, (layer, p, q)


def cell_values(page: Page) -> dict[tuple[int, int], tuple[float, str]]:
    """(row, col) -> (data-value, background) of every patch cell of the page's (first) grid."""
    out = {}
    for r, c, v, bg in page.page.eval_on_selector_all(".cell", CELLS_JS):
        out.setdefault((r, c), (float(v), bg))
    return out


def hover_patch(page: Page, lens: Any, cell: tuple[int, int]) -> int:
    """Hover patch ``cell``; returns its row in the lens result."""
    pos = lens.spans.grid[0, lens.positions, 2:]
    row = int(((pos[:, 0] == cell[0]) & (pos[:, 1] == cell[1])).nonzero()[0, 0])
    page.page.hover(f".cell[data-row='{cell[0]}'][data-col='{cell[1]}']")
    assert f"patch ({cell[0]}, {cell[1]})" in page.text("#panel-title")
    return row


def check_lens_page(page: Page, lens: Any, cell: tuple[int, int]) -> None:
    """Hover patch ``cell`` -> its readout; the slider recolours the grid by each layer's first-target probability."""
    check_lens_readout(page, lens, hover_patch(page, lens, cell))
    page.page.select_option("#colour-by", "p:0")
    pos = lens.spans.grid[0, lens.positions, 2:].tolist()
    colours = set()
    for li, layer in enumerate(lens.layers):
        page.slider("#layer", li)
        assert f"layer {layer}" in page.text("#legend .label")
        shown = cell_values(page)
        for r, (rr, cc) in enumerate(pos):
            if rr >= 0:
                assert abs(shown[(rr, cc)][0] - float(lens.target_probs[li, r, 0])) <= 1 / 65534, (layer, r)
        colours.add(shown[cell][1])
    assert len(colours) > 1, "moving the layer slider did not recolour the patch"


def check_attention_weight(page: Page, cache: Any, layer: int, head: int, query: int, key: int) -> None:
    """Hover image key ``key`` in the attention view: the readout shows the cached pattern's weight (head -1: mean)."""
    r, c = cache.spans.grid[0, key, 2:].tolist()
    page.page.hover(f"#attn-grid .cell[data-row='{r}'][data-col='{c}']")
    pat = cache[f"blocks.{layer}.attn.hook_pattern"][0, :, query]  # [head, key]
    want = pat[:, key].mean() if head < 0 else pat[head, key]
    tol = (pat.max(-1).values.mean() if head < 0 else pat[head].max()) / 510 + 1e-6  # uint8 of each row's maximum
    shown = float(page.attr("#readout", "data-weight"))
    assert abs(shown - float(want)) <= float(tol), (layer, head, query, shown, float(want))
    assert f"(position {query})" in page.text("#readout") and f"layer {layer}," in page.text("#readout")
