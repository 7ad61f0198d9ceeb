"""The Colab notebooks in docs/ run end to end: executed with nbclient on the shipped toy models, on CPU,
offline, in a temp dir; any cell error fails the test.

Each notebook's first code cell (tagged ``parameters``) holds the real Colab settings; like papermill, the
test inserts a cell right after it that overrides them with the toy settings, then appends a few checks
that run in the notebook's own kernel (the figure's title / colour bar / axis labels, the numbers behind
the tables). The kernel imports this checkout's ``hooked_vlm`` (PYTHONPATH), which one check asserts.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import nbclient  # the dev extra: pip install -e ".[dev]" (nbclient, nbformat, ipykernel)
import nbformat

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CELL_TIMEOUT_S = 300


def with_parameters(nb, params: dict, checks: str):
    """``nb`` with a cell of ``params`` (name = repr(value) lines) after the ``parameters`` cell and a
    ``checks`` cell at the end."""
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"expected one code cell tagged 'parameters', found {len(tagged)}"
    first_code = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    assert tagged[0] == first_code, "the settings cell must be the first code cell"
    names = set(params)
    settings = nb.cells[tagged[0]].source
    missing = [k for k in names if f"\n{k} = " not in f"\n{settings}"]
    assert not missing, f"the settings cell does not define {missing}"
    injected = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(tagged[0] + 1, injected)
    nb.cells.append(nbformat.v4.new_code_cell(checks))
    return nb


def execute(name: str, params: dict, checks: str, tmp_path: Path, monkeypatch) -> tuple[object, float]:
    """Run docs/<name> with ``params`` in ``tmp_path``; returns the executed notebook and the seconds."""
    nb = nbformat.read(DOCS / name, as_version=4)
    nbformat.validate(nb)
    for c in nb.cells:
        if c.cell_type == "code":
            assert not c.outputs and c.execution_count is None, f"{name} is committed with outputs; clear them"
    nb = with_parameters(nb, params, checks)
    # a kernel spec of our own, so the kernel is this interpreter whatever other "python3" specs exist
    spec = tmp_path / "jupyter" / "kernels" / "hooked-vlm-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "hooked_vlm test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # toys load from the package; nothing may touch the hub
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="hooked-vlm-test",
                                     resources={"metadata": {"path": str(tmp_path)}})
    t0 = time.perf_counter()
    client.execute()  # raises CellExecutionError on the first cell that fails
    seconds = time.perf_counter() - t0
    nbformat.write(nb, tmp_path / f"executed_{name}")
    return nb, seconds


def outputs_of(nb, tag: str) -> list[dict]:
    cells = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert cells, f"no cell tagged {tag!r}"
    return [o for c in cells for o in c.outputs]


def mime_types(outputs: list[dict]) -> list[str]:
    return [m for o in outputs for m in o.get("data", {})]


SOURCE_CHECK = f"""
import os, sys
assert os.path.realpath(sys.executable) == os.path.realpath({sys.executable!r}), sys.executable
assert os.path.realpath(hooked_vlm.__file__).startswith(os.path.realpath({str(ROOT)!r})), hooked_vlm.__file__
"""

LLAVA_CHECKS = SOURCE_CHECK + """
title = fig._suptitle.get_text()
assert "Logit lens" in title and repr(TARGET) in title and MODEL_ID in title, title
bars = [a for a in fig.axes if a.get_label() == "<colorbar>"]
assert len(bars) == 1 and bars[0].get_ylabel() == f"P({TARGET!r})", [a.get_label() for a in fig.axes]
panels = [a for a in fig.axes if a.get_label() != "<colorbar>"]
assert panels[0].get_ylabel() == "patch row" and all(a.get_xlabel() == "patch column" for a in panels)
# the grid drawn is the lens' own per-patch probability, and the red object's patches light up at the output
assert grid.shape == (n + 1, 6, 6), grid.shape
out = grid[lens.layers.index(n)]
from hooked_vlm.toy.data import make_scene
import numpy as np
scene = make_scene(np.random.default_rng(0), colour=TARGET)
obj = np.zeros(36, bool); obj[scene.object_patches(0)] = True
assert answer_text.strip().startswith(TARGET), answer_text
assert float(out.flatten()[obj].mean()) > float(out.flatten()[~obj].mean()), out
assert set(summary.index) == set(range(n + 1)), summary
"""


def test_colab_llava_notebook_runs_on_toy(tmp_path, monkeypatch):
    params = {"MODEL_ID": "toy-llava", "DTYPE": "float32", "DEVICE": "cpu", "IMAGE": "toy:red",
              "PROMPT": "USER: <image>\nwhat colour is the shape ? ASSISTANT:", "TARGET": "red",
              "MAX_NEW_TOKENS": 3, "INSTALL": False}
    nb, seconds = execute("colab_llava15.ipynb", params, LLAVA_CHECKS, tmp_path, monkeypatch)
    print(f"colab_llava15.ipynb executed in {seconds:.1f} s")
    assert "image/png" in mime_types(outputs_of(nb, "figure"))
    tables = [o["data"]["text/html"] for o in outputs_of(nb, "table") if "text/html" in o.get("data", {})]
    assert len(tables) == 2 and "<table" in tables[0] and "best_rank" in tables[1]
    views = [o["data"]["text/html"] for o in outputs_of(nb, "view") if "text/html" in o.get("data", {})]
    assert len(views) == 1 and views[0].startswith("<iframe srcdoc=") and "logit lens" in views[0]  # lens.show() inline


GATE_CHECKS = SOURCE_CHECK + """
# what the notebook's text says the toy shows (docs/toy_models.md: no narrow gate)
assert answers == {"image": "red", "source image": "blue"}, answers
assert knockout.loc["EOI", "answer"] == "red" and knockout.loc["EOI", "P('red')"] > 0.9, knockout
assert knockout.loc["all image codes", "P('red')"] < 0.5 and knockout.loc["all image codes", "answer"] != "red", knockout
assert knockout.loc["one random image code (control)", "answer"] == "red", knockout
assert set(shares.columns) >= {"eoi", "image_other"} and (shares["eoi"] < shares["image_other"]).all(), shares
e, i = sweeps["eoi"], sweeps["image"]
assert not e["flipped"].any() and bool(i.loc[i.layer == 0, "flipped"].iloc[0]), (e, i)
assert fig_flow.axes[0].get_xlabel() == "layer" and "share" in fig_flow.axes[0].get_ylabel()
assert MODEL_ID in fig_flow.axes[0].get_title() and MODEL_ID in fig_patch.axes[0].get_title()
assert fig_patch.axes[0].get_xlabel().startswith("layer") and "logit" in fig_patch.axes[0].get_ylabel()
"""


def test_colab_narrow_gate_notebook_runs_on_toy(tmp_path, monkeypatch):
    params = {"MODEL_ID": "toy-chameleon", "DTYPE": "float32", "DEVICE": "cpu", "IMAGE": "toy:red",
              "SOURCE_IMAGE": "toy:blue", "ANSWERS": ("red", "blue"),
              "PROMPT": "USER: <image>\nwhat colour is the shape ? ASSISTANT:", "MAX_NEW_TOKENS": 1,
              "INSTALL": True}  # True: the install cell must see that hooked_vlm imports and install nothing
    nb, seconds = execute("colab_narrow_gate.ipynb", params, GATE_CHECKS, tmp_path, monkeypatch)
    print(f"colab_narrow_gate.ipynb executed in {seconds:.1f} s")
    assert mime_types(outputs_of(nb, "figure")).count("image/png") == 2
    tables = [o["data"]["text/html"] for o in outputs_of(nb, "table") if "text/html" in o.get("data", {})]
    assert len(tables) == 3 and "knocked out" in tables[0] and "image_other" in tables[1] and "flipped" in tables[2]


GRAPH_CHECKS = SOURCE_CHECK + """
# the figure: title, labelled axes, colour bar; the patches' influence is the graph's own
assert MODEL_ID in fig.axes[0].get_title() and "influence" in fig.axes[0].get_title(), fig.axes[0].get_title()
assert fig.axes[0].get_xlabel() == "patch column" and fig.axes[0].get_ylabel() == "patch row"
bars = [a for a in fig.axes if a.get_label() == "<colorbar>"]
assert len(bars) == 1 and bars[0].get_ylabel() == "influence on the logits"
assert patch_influence.shape == (6, 6)
# 256 of the ~1,900 active features are nodes: they and the errors give the logit to 1% (measured 6e-3 of ~)
logit = float(graph.logit_targets.values[0])
assert abs(float(reconstructed[0]) - logit) <= 0.01 * abs(logit), (float(reconstructed[0]), logit)
# the toy answers the shape's colour, and the image's patches carry most of the inputs' influence (measured 0.9+)
assert answer_text.strip().startswith("blue") and graph.logit_targets.labels[0] == "blue", answer_text
assert image_share > 0.5, image_share
# the intervention table: the frozen replacement moves the logit exactly as the graph predicts
assert abs(edits.iloc[1, 2] - predicted) <= 1e-3, (edits, predicted)
assert "transcoder feature" in fig_top._suptitle.get_text() and len(top.examples) == 8
# the feature most active at the most influential patch finds the blue scenes (measured: all 4 of the 24 in its top 8)
n_blue = sum(s.objects[0].colour == "blue" for s in scenes)
assert top_colours[0] == "blue" and top_colours.count("blue") >= n_blue - 1, (top_colours, n_blue)
"""


def test_colab_attribution_graph_notebook_runs_on_toy(tmp_path, monkeypatch):
    import pytest

    pytest.importorskip("sae_lens")  # the shipped toy transcoders load through SAELens (the min venv has it)
    params = {"MODEL_ID": "toy-llava", "TRANSCODERS": "toy-llava-transcoders", "DTYPE": "float32", "DEVICE": "cpu",
              "IMAGE": "toy:blue", "PROMPT": "USER: <image>\nwhat colour is the shape ? ASSISTANT:", "TARGET": None,
              "MAX_FEATURE_NODES": 256, "BATCH_SIZE": 64, "TOP_SCENES": 24, "INSTALL": True}
    nb, seconds = execute("colab_attribution_graph.ipynb", params, GRAPH_CHECKS, tmp_path, monkeypatch)
    print(f"colab_attribution_graph.ipynb executed in {seconds:.1f} s")
    assert mime_types(outputs_of(nb, "figure")).count("image/png") == 2
    tables = [o["data"]["text/html"] for o in outputs_of(nb, "table") if "text/html" in o.get("data", {})]
    assert len(tables) == 2 and "influence" in tables[0] and "frozen replacement" in tables[1]
    views = [o["data"]["text/html"] for o in outputs_of(nb, "view") if "text/html" in o.get("data", {})]
    assert len(views) == 1 and views[0].startswith("<iframe srcdoc=") and "attribution graph" in views[0]
