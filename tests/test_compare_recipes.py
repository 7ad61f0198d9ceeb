"""The recipe comparison (python -m experiments.compare_recipes): one markdown table, a column per checkpoint, with
the held-out accuracy of its training record and a row per measured effect. The effects run on few scenes here
(each is tested on the shipped toy in tests/test_toy.py); what is checked is the command around them."""

from __future__ import annotations

import json
import re

import pytest
import torch

from experiments import compare_recipes
from hooked_vlm.toy import toy_checkpoint_path

N = 12  # scenes per effect (the command: 200 / 300 / 100 and a 600 + 300 probe)


@pytest.fixture()
def small(monkeypatch):
    """The command's effects on N scenes: same functions, fewer scenes."""
    for name in ("object_logit_lens", "object_ablation", "object_knockout"):
        fn = getattr(compare_recipes, name)
        monkeypatch.setattr(compare_recipes, name, lambda model, n, _fn=fn, **kw: _fn(model, n=N, **kw))
    probe = compare_recipes.background_colour_probe
    monkeypatch.setattr(compare_recipes, "background_colour_probe", lambda model: probe(model, n_train=60, n_test=30))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the command sets --threads (default 1) for the whole process


def table_rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def test_one_column_per_checkpoint_one_row_per_effect(small, capsys, tmp_path):
    folder = toy_checkpoint_path("toy-llava")
    copy = tmp_path / "copy"  # a checkpoint folder given by path, as `--recipe llava --out DIR` leaves it
    copy.mkdir()
    for f in folder.iterdir():
        if f.is_file():
            (copy / f.name).write_bytes(f.read_bytes())
    compare_recipes.main(["toy-llava", str(copy)])
    out = capsys.readouterr().out
    lines = [l for l in out.splitlines() if l.startswith("|")]
    assert lines[0] == f"| | toy-llava | {copy} |" and lines[1] == "|---|---|---|"
    rows = table_rows("\n".join(lines))
    acc = json.loads((folder / "toy_training.json").read_text())["held_out_accuracy"]
    held = " / ".join(f"{acc[k]:.1f}" for k in ("colour", "shape", "position", "caption"))
    assert rows["held-out exact match colour / shape / position / caption (1,000 scenes)"] == [held, held]
    layers = [f"block {l}" for l in range(2)]  # the toy LM has 2 layers: the lens reads each block's input ...
    lens = [r for r in rows if r.startswith("lens at object patches")]
    assert len(lens) == 2 * (len(layers) + 1), lens  # ... and the final output, in two vocabularies
    ablation = [r for r in rows if "mean-ablation" in r]
    assert len(ablation) == 4 and sum("+1-cell buffer" in r for r in ablation) == 2  # colour / shape, buffer 0 / 1
    knockout = [r for r in rows if r.startswith("colour knockout to answer")]
    assert len(knockout) == len(layers) + 1  # each layer alone, then all
    assert len(rows) == 1 + len(lens) + len(ablation) + len(knockout) + 1  # + the background probe
    number = r"\d+\.\d"
    for label, cells in rows.items():
        assert cells[0] == cells[1], (label, cells)  # the same weights measure the same (fixed scene seeds)
        assert all(re.fullmatch(rf"{number}(( / | -> ){number})*", c) for c in cells), (label, cells)


def test_unknown_checkpoint_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a shipped toy nor a checkpoint folder"):
        compare_recipes.main([str(tmp_path / "nothing")])
