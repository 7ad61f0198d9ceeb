"""The paper reproductions (docs/reproduce/*.py) run end to end with ``--smoke`` on the shipped toys: the Narrow Gate
paper's Table 1 knockouts (toy-llava, and toy-chameleon, which has no gate) and Neo et al.'s object ablation."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", ["narrow_gate_table1.py", "neo_object_ablation.py"])
def test_reproduction_scripts_smoke(script, tmp_path, monkeypatch):
    out = tmp_path / "results.csv"
    extra = ["--n-random", "1"] if script == "narrow_gate_table1.py" else []
    monkeypatch.setattr(sys, "argv", [script, "--model", "toy-llava", "--smoke", "--n", "12", "--batch-size", "12",
                                      "--out", str(out), "--device", "cpu", "--dtype", "float32", *extra])
    runpy.run_path(str(ROOT / "docs" / "reproduce" / script), run_name="__main__")
    import pandas as pd

    df = pd.read_csv(out)
    assert len(df) == (4 if script == "narrow_gate_table1.py" else 3) and df.notna().all().all(), df
    if script == "narrow_gate_table1.py":
        none, image = df.set_index("condition").loc["none"], df.set_index("condition").loc["image->text"]
        assert none["vqa_accuracy"] >= 0.9 and image["vqa_accuracy"] < none["vqa_accuracy"], df
    else:
        by = df.set_index("condition")
        assert by.loc["none", "accuracy"] >= 0.9 and by.loc["object", "accuracy"] < by.loc["random", "accuracy"], df


def test_narrow_gate_reproduction_smoke(tmp_path, monkeypatch):
    out = tmp_path / "results.csv"
    monkeypatch.setattr(sys, "argv", ["narrow_gate_table1.py", "--model", "toy-chameleon", "--smoke", "--n", "12",
                                      "--batch-size", "12", "--out", str(out), "--device", "cpu", "--dtype", "float32",
                                      "--n-random", "1"])
    runpy.run_path(str(ROOT / "docs" / "reproduce" / "narrow_gate_table1.py"), run_name="__main__")
    import pandas as pd

    by = pd.read_csv(out).set_index("condition")
    assert by.loc["none", "vqa_accuracy"] >= 0.9, by
    assert by.loc["gate", "vqa_accuracy"] >= by.loc["none", "vqa_accuracy"] - 0.1, by  # no gate
    assert by.loc["image->text", "vqa_accuracy"] <= 0.5, by
