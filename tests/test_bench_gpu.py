"""benchmarks/bench_gpu.py runs end to end on a tiny shape on CPU and records only when asked."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" / "bench_gpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tiny_cpu_run_prints_and_records_the_table(tmp_path):
    bench = _bench()
    results = tmp_path / "RESULTS.md"
    r = bench.main(["--tiny", "--device", "cpu", "--dtype", "float32", "--record", "--results", str(results)])
    assert r["max_abs_logit_diff"] <= 1e-4  # fp32: the same model as HF
    assert r["same_generated_tokens"] is True
    for key in ("hf_s", "ours_s", "cache_resid_s", "cache_all_s", "gen_hf_s", "gen_ours_s", "load_hf_s", "load_ours_s"):
        assert r[key] > 0 and math.isfinite(r[key]), key
    assert r["cache_all_bytes"] > 0 and r["cache_entries"] > 10
    assert math.isnan(r["peak_ours_bytes"])  # CUDA allocator peaks only
    text = results.read_text()
    assert "bench_gpu.py` --tiny" in text and text.count("\n|") == len(r["rows"]) + 2
    assert "run_with_cache, every hook" in text and "tokens/s" in text and "load time" in text


def test_tiny_runs_do_not_record_unless_asked():
    bench = _bench()
    assert not bench.should_record(bench.parse(["--tiny"]))
    assert bench.should_record(bench.parse(["--tiny", "--record"]))
    assert bench.should_record(bench.parse([]))
    assert not bench.should_record(bench.parse(["--no-record"]))
