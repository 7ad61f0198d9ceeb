"""Benchmark: attribution patching vs the real activation-patching sweep it estimates (run by hand, not a test).

Same model, same input, one process: the toy LLaVA (toy-llava) answering "what colour is the shape ?" about
``--pairs`` scenes, clean in one colour and corrupt in another (the same scene otherwise), metric = the logit
difference of the two colours at the answering position. Every (hook type, layer, position) entry of
``resid_pre``, ``attn_out`` and ``mlp_out`` (3 x 2 layers x 47 positions = 282 entries):

* ``attribution_patching``: two forwards and one backward;
* ``exact_patching(chunk=1)``: one ``activation_patching`` forward per entry (what the sweep costs with
  ``hooked_vlm.analysis.patching`` alone);
* ``exact_patching(chunk=47)``: the same effects with 47 patched copies per forward.

Reports medians of ``--repeats`` interleaved runs, the ratios, and the Spearman correlation per hook type.

    python benchmarks/bench_attribution.py [--pairs 4] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hooked_vlm import HookedVLM  # noqa: E402
from hooked_vlm.analysis import attribution_patching, exact_patching, last_logit_diff_metric, rank_correlation  # noqa: E402
from hooked_vlm.toy.data import COLOURS, make_scene  # noqa: E402
from hooked_vlm.toy.tasks import ToyEncoder  # noqa: E402

HOOKS = ("resid_pre", "attn_out", "mlp_out")


def toy_pairs(model, n: int):
    enc = ToyEncoder(model.processor)
    length = enc.first_answer_position("colour") + 1
    rng = np.random.default_rng(0)
    pairs = [tuple(rng.choice(list(COLOURS), 2, replace=False)) for _ in range(n)]

    def inputs(colours):
        b = enc.batch([make_scene(np.random.default_rng(100 + i), colour=c) for i, c in enumerate(colours)], ("colour",))
        return dict(input_ids=b["input_ids"][:, :length], attention_mask=b["attention_mask"][:, :length],
                    pixel_values=b["pixel_values"])

    clean, corrupt = inputs([a for a, _ in pairs]), inputs([b for _, b in pairs])
    tokens = torch.tensor([[model.to_single_token(a), model.to_single_token(b)] for a, b in pairs])
    return clean, corrupt, last_logit_diff_metric(model, corrupt, tokens)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = HookedVLM.from_pretrained("toy-llava")
    clean, corrupt, metric = toy_pairs(model, args.pairs)
    P = clean["input_ids"].shape[1]
    runs = {
        "attribution_patching": lambda: attribution_patching(model, clean, corrupt, metric, hooks=HOOKS),
        "exact_patching(chunk=1)": lambda: exact_patching(model, clean, corrupt, metric, hooks=HOOKS, chunk=1,
                                                          progress=False),
        f"exact_patching(chunk={P})": lambda: exact_patching(model, clean, corrupt, metric, hooks=HOOKS, chunk=P,
                                                             progress=False),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    results = {}
    runs["attribution_patching"]()  # warm-up
    for _ in range(args.repeats):
        for name, fn in runs.items():
            t = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    n_entries = len(HOOKS) * model.cfg.n_layers * P
    print(f"toy-llava, {args.pairs} pairs, {n_entries} (hook, layer, position) entries, {args.threads} threads, "
          f"median of {args.repeats}")
    for name, t in med.items():
        print(f"  {name:28s} {t:8.3f} s   ratio to attribution patching {t / med['attribution_patching']:7.1f}")
    est, ex = results["attribution_patching"], results["exact_patching(chunk=1)"]
    print("  Spearman (estimate vs exact): " + ", ".join(f"{h} {rank_correlation(est, ex, h):.3f}" for h in HOOKS))
    same = max(float((ex.effects[h] - results[f"exact_patching(chunk={P})"].effects[h]).abs().max()) for h in HOOKS)
    print(f"  max |chunk=1 - chunk={P}| effect: {same:.2e}")


if __name__ == "__main__":
    main()
