"""The gate experiment (python -m experiments.gate_experiment): the smoke mode trains both objectives end to end and
writes results, figure and tables with the expected structure; ``--from`` measures the kept checkpoints again. The
objective switch of the training it runs is tested in tests/test_toy_native_training.py."""

from __future__ import annotations

import json

import pytest

from experiments.gate_experiment import OBJECTIVES, SCALARS, main


def test_smoke_end_to_end(tmp_path):
    kept = tmp_path / "kept"
    report = main(["--smoke", "--seeds", "0,1", "--out", str(tmp_path), "--keep", str(kept)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["smoke"] and saved["seeds"] == [0, 1] and saved["options"]["lm_layers"] >= 4
    assert set(saved["results"]) == set(OBJECTIVES) == set(report["results"])
    for objective, by_seed in saved["results"].items():
        assert set(by_seed) == {"0", "1"}
        for r in by_seed.values():
            assert all(0.0 <= r[c] <= 100.0 for c in SCALARS), r
            assert len(r["eoi attention share"]) == len(r["eoi patching flip"]) == saved["options"]["lm_layers"]
            assert all(0.0 <= x <= 1.0 for x in r["eoi attention share"] + r["eoi patching flip"]), r
            for where in ("eoi", "image_mean"):
                assert len(r[f"{where} lens"]) == len(r[f"{where} overlap"]) == saved["options"]["lm_layers"]
                assert all(0.0 <= x <= 100.0 for x in r[f"{where} lens"]), r
                assert all(0.0 <= x <= 1.0 for x in r[f"{where} overlap"]), r
    assert (tmp_path / "gate_experiment.png").stat().st_size > 20_000  # the three-panel figure
    table = (tmp_path / "table.md").read_text()
    assert table.count("| mean ± sd |") == 2 and all(f"| {o} | 1 |" in table for o in OBJECTIVES)
    assert all(f"| {o} | {l} |" in table for o in OBJECTIVES for l in range(saved["options"]["lm_layers"]))
    # --from measures the kept checkpoints again without training: the same numbers
    again = main(["--smoke", "--seeds", "0,1", "--from", str(kept)])
    drop = lambda r: {k: v for k, v in r.items() if k != "total_seconds"}
    assert {o: {s: drop(r) for s, r in by.items()} for o, by in again["results"].items()} == \
        {o: {s: drop(r) for s, r in by.items()} for o, by in report["results"].items()}
    with pytest.raises(FileNotFoundError, match="no trained checkpoint"):
        main(["--smoke", "--seeds", "5", "--from", str(kept)])
