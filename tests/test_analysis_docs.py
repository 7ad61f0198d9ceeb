"""Every example script in docs/analysis runs (on the tiny model, in-process so the model is built once)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest
import torch

DOCS = Path(__file__).resolve().parents[1] / "docs" / "analysis"
SCRIPTS = sorted(p.name for p in DOCS.glob("[0-9]*.py"))


def test_there_is_one_example_per_analysis():
    assert len(SCRIPTS) >= 8


@pytest.mark.parametrize("name", SCRIPTS)
def test_example_runs(name, tmp_path, monkeypatch):
    if "from sae_lens" in (DOCS / name).read_text():  # 09_saes.py: runs where sae-lens is installed (the min venv)
        pytest.importorskip("sae_lens")
    monkeypatch.setenv("HOOKED_VLM_EXAMPLES_OUT", str(tmp_path))
    monkeypatch.syspath_prepend(str(DOCS))
    sys.modules.pop("_setup", None)
    with torch.no_grad():
        runpy.run_path(str(DOCS / name), run_name="__main__")
