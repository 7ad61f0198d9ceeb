"""The narrow-gate hypothesis under control: ``python -m experiments.gate_experiment [--seeds 0,1,2]``.

Two native toys (:mod:`hooked_vlm.toy.train_native`, Chameleon-style, image codes in the vocabulary)
with the same architecture, data, steps and seeds, differing only in the objective:

- ``u``: understanding only (loss on the answers and captions);
- ``ug``: understanding + image generation (also the next-token loss on the image codes and EOI, and
  caption -> image examples).

Per model and seed (colour questions, held-out scenes): accuracy with EOI knocked out (all layers,
``mask`` and ``zero`` knockout), with image -> text blocked (BOI + codes), with EOI and the codes
both blocked, with one random image code knocked out; the share of the attention of text after the
image that goes to EOI, per layer (:func:`~hooked_vlm.analysis.attention_flow`); and EOI patching
across images with a different colour (:func:`~hooked_vlm.analysis.patching_sweep`, flip fraction
per layer); per layer, the colour logit lens (:func:`~hooked_vlm.demo.gate_effects.span_logit_lens`)
and the neighbourhood overlap with the colour labels (:func:`~hooked_vlm.analysis.label_overlap`, k
= 30) at EOI and at the mean image token. The hypothesis predicts that EOI knockout and EOI patching
matter for ``ug`` and not for ``u``, and that the gate has a high attention share AND a high label
overlap.

``--from DIR`` measures checkpoints kept by an earlier ``--keep DIR`` run (``{objective}-seed{seed}``
folders) without training them again.

``--smoke`` trains tiny models for a few steps (end to end in seconds; the numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from hooked_vlm.demo.gate_effects import KNOCKOUTS, colour_inputs, knockout_accuracy, span_logit_lens
from hooked_vlm.toy.data import make_scenes
from hooked_vlm.toy.tasks import ToyEncoder
from hooked_vlm.toy.train_native import DEFAULTS, train

OBJECTIVES = {"u": "U (understanding)", "ug": "U+G (+ generation)"}
EXPERIMENT = dict(lm_layers=4)  # the one change from train_native.DEFAULTS (the paper's gate needs depth)
SMOKE = dict(vq_steps=3, vq_batch=4, kmeans_scenes=40, n_codes=32, steps=1, batch_scenes=2, warmup=1, lm_layers=4, lm_hidden=32)


def colour_pairs(n: int, seed: int) -> tuple[list, list]:
    """(targets, sources): held-out scenes and, for each, the next scene whose object has another colour."""
    scenes = make_scenes(2 * n, seed)
    targets, sources = [], []
    for i, t in enumerate(scenes[:n]):
        src = next(s for s in scenes[i + 1:] if s.objects[0].colour != t.objects[0].colour)
        targets.append(t)
        sources.append(src)
    return targets, sources


@torch.no_grad()
def measure(model: Any, n: int = 200, seed: int = 781) -> dict[str, Any]:
    """The gate measurements of one model (see the module docstring)."""
    from hooked_vlm.analysis import attention_flow, label_overlap, patching_sweep

    encoder = ToyEncoder(model.processor)
    scenes = make_scenes(n, seed)
    layers = list(range(model.cfg.n_layers))
    out: dict[str, Any] = knockout_accuracy(model, n, seed)
    flow = attention_flow(model, colour_inputs(encoder, scenes[:100]), query_span="after_image",
                          keys=["eoi", "boi", "image", "text"])
    eoi = flow[flow["role"] == "eoi"].sort_values("layer")
    out["eoi attention share"] = [round(float(x), 4) for x in eoi["share"]]
    targets, srcs = colour_pairs(min(n, 100), seed + 1)
    ids = lambda ss: [model.to_single_token(s.objects[0].colour) for s in ss]
    tokens = torch.tensor(list(zip(ids(srcs), ids(targets))))  # (A = source colour, B = target colour)
    sweep = patching_sweep(model, colour_inputs(encoder, targets), colour_inputs(encoder, srcs), tokens, span="eoi",
                           site="resid_pre")
    out["eoi patching flip"] = [round(float(x), 4) for x in sweep.groupby("layer")["flipped"].mean().sort_index()]
    lens = span_logit_lens(model, n, seed - 3)  # seed 778: the toys' logit-lens scenes
    overlap = label_overlap(model, colour_inputs(encoder, scenes), [s.objects[0].colour for s in scenes],
                            spans={"eoi": "eoi", "image_mean": "image"}, k=30, progress=False)
    for where in ("eoi", "image_mean"):
        out[f"{where} lens"] = [round(lens[where][f"block {l}"], 2) for l in layers]
        rows = overlap[overlap["span"] == where].sort_values("layer")
        out[f"{where} overlap"] = [round(float(x), 4) for x in rows["overlap"]]
    return out


def measure_kept(folder: Path, n: int) -> dict[str, Any]:
    """:func:`measure` on a checkpoint saved by :func:`run` (``--keep``), with its training record."""
    from hooked_vlm import HookedVLM

    record = json.loads((folder / "toy_training.json").read_text())
    res = measure(HookedVLM.from_pretrained(str(folder)), n)
    res.update(held_out=record["held_out_accuracy"], train_seconds=record["train_seconds"])
    return res


def run(seeds: list[int], opts: dict, n: int, threads: int, workdir: Path, held_out_n: int = 1000,
        objectives: tuple[str, ...] = tuple(OBJECTIVES), trained: bool = False) -> dict[str, Any]:
    """Train both objectives per seed (same options otherwise), measure each. -> {objective: {seed: result}}.
    ``trained``: the checkpoints are already in ``workdir`` (an earlier ``--keep``); measure only."""
    results: dict[str, Any] = {o: {} for o in objectives}
    for seed in seeds:
        for objective in objectives:
            start = time.time()
            folder = workdir / f"{objective}-seed{seed}"
            if trained:
                torch.set_num_threads(threads)
                if not (folder / "toy_training.json").exists():
                    raise FileNotFoundError(f"--from {workdir}: no trained checkpoint {folder.name} there (train it with --keep)")
            else:
                train(dict(opts, seed=seed, objective=objective), folder, threads, held_out_n)
            res = measure_kept(folder, n)
            res["total_seconds"] = round(time.time() - start, 1)
            results[objective][str(seed)] = res
            print(json.dumps({"objective": objective, "seed": seed, **res}), flush=True)
    return results


SCALARS = ["base"] + [f"{k} ({mode})" for k in KNOCKOUTS for mode in ("mask", "zero")]


def table(results: dict[str, Any]) -> str:
    """Markdown: one row per objective and seed, then mean +- sd over seeds per objective."""
    cols = SCALARS + ["max EOI attn share (layer)", "max EOI patch flip (layer)"]
    lines = ["| objective | seed | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    peak = lambda xs: f"{max(xs):.3f} ({xs.index(max(xs))})"
    for o, by_seed in results.items():
        for seed, r in by_seed.items():
            vals = [f"{r[c]:.1f}" for c in SCALARS] + [peak(r["eoi attention share"]), peak(r["eoi patching flip"])]
            lines.append(f"| {o} | {seed} | " + " | ".join(vals) + " |")
        rs = list(by_seed.values())
        if len(rs) > 1:
            ms = lambda xs: f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs):.1f}"
            ms3 = lambda xs: f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}"
            vals = [ms([r[c] for r in rs]) for c in SCALARS] + [ms3([max(r["eoi attention share"]) for r in rs]),
                                                                 ms3([max(r["eoi patching flip"]) for r in rs])]
            lines.append(f"| {o} | mean ± sd | " + " | ".join(vals) + " |")
    return "\n".join(lines)


PER_LAYER = {"eoi attention share": "EOI attn share", "eoi patching flip": "EOI patch flip", "eoi lens": "EOI lens (%)",
             "image_mean lens": "image-mean lens (%)", "eoi overlap": "EOI overlap", "image_mean overlap": "image-mean overlap"}


def layer_table(results: dict[str, Any]) -> str:
    """Markdown: per objective and layer, each per-layer measure as mean ± sd over seeds (the value alone for one seed)."""
    lines = ["| objective | layer | " + " | ".join(PER_LAYER.values()) + " |", "|---|---|" + "---|" * len(PER_LAYER)]
    for o, by_seed in results.items():
        rs = list(by_seed.values())
        if not rs:
            continue
        for l in range(len(rs[0]["eoi attention share"])):
            cells = []
            for key in PER_LAYER:
                xs = [r[key][l] for r in rs]
                fmt = "{:.1f}" if "lens" in key else "{:.3f}"
                cells.append(fmt.format(statistics.mean(xs)) + (" ± " + fmt.format(statistics.stdev(xs)) if len(xs) > 1 else ""))
            lines.append(f"| {o} | {l} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(results: dict[str, Any]):
    """Three panels, one colour per objective (mean over seeds, error bars = sd, dots = seeds): colour accuracy
    under each knockout (mask); EOI's share of the text's attention per layer; label overlap at EOI (solid)
    and at the mean image token (dashed) per layer."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    conds = ["base"] + [f"{k} (mask)" for k in KNOCKOUTS]
    width = 0.8 / max(len(results), 1)
    for i, (o, by_seed) in enumerate(results.items()):
        rs = list(by_seed.values())
        if not rs:
            continue
        colour = f"C{i}"
        vals = np.array([[r[c] for c in conds] for r in rs])  # [seed, condition]
        x = np.arange(len(conds)) + (i - (len(results) - 1) / 2) * width
        axes[0].bar(x, vals.mean(0), width, yerr=vals.std(0, ddof=1) if len(rs) > 1 else None, color=colour,
                    label=OBJECTIVES.get(o, o), capsize=3)
        for row in vals:
            axes[0].plot(x, row, "k.", ms=3)
        for ax, keys in ((axes[1], [("eoi attention share", "-")]), (axes[2], [("eoi overlap", "-"), ("image_mean overlap", "--")])):
            for key, style in keys:
                ys = np.array([r[key] for r in rs])  # [seed, layer]
                layers = np.arange(ys.shape[1])
                label = OBJECTIVES.get(o, o) + ("" if ax is axes[1] else (", EOI" if key.startswith("eoi") else ", mean image token"))
                ax.errorbar(layers, ys.mean(0), yerr=ys.std(0, ddof=1) if len(rs) > 1 else None, color=colour, ls=style,
                            marker="o", capsize=3, label=label)
    axes[0].set(xticks=np.arange(len(conds)), ylabel="colour accuracy (%)", ylim=(0, 130),
                title="colour accuracy, text after the image\ncannot attend to the keys (all layers)")
    axes[0].set_xticklabels([c.replace(" (mask)", "") for c in conds], fontsize=8, rotation=20, ha="right")
    axes[1].set(xlabel="layer", ylabel="share of the text's attention on EOI", title="attention from text after the image to EOI")
    axes[2].set(xlabel="layer", ylabel="k-NN label overlap with the colour (k = 30)",
                title="colour neighbourhood overlap\n(chance: 1 / 6)")
    axes[2].axhline(1 / 6, color="grey", lw=0.8, ls=":")
    axes[0].legend(fontsize=7, loc="upper center", ncol=2)
    for ax in axes[1:]:
        ax.legend(fontsize=7)
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    fig.suptitle("The narrow gate under control: native toys trained with (U+G) and without (U) image generation, "
                 f"seeds {', '.join(next(iter(results.values())))}", fontsize=10)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    ap.add_argument("--steps", type=int, default=DEFAULTS["steps"], help="LM training steps (both objectives)")
    ap.add_argument("--lm-layers", type=int, default=EXPERIMENT["lm_layers"])
    ap.add_argument("--lm-hidden", type=int, default=DEFAULTS["lm_hidden"])
    ap.add_argument("--objectives", default="u,ug", help="which objectives to train (default both)")
    ap.add_argument("--n", type=int, default=200, help="held-out scenes per measurement")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="write results.json and table.md here")
    ap.add_argument("--keep", type=Path, default=None, help="keep the trained checkpoints in this folder")
    ap.add_argument("--from", dest="from_dir", type=Path, default=None,
                    help="measure the checkpoints an earlier --keep run left in this folder (no training)")
    ap.add_argument("--smoke", action="store_true", help="tiny models, a few steps: checks the pipeline only")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    opts = dict(DEFAULTS, **(SMOKE if args.smoke else dict(steps=args.steps, lm_layers=args.lm_layers, lm_hidden=args.lm_hidden)))
    if args.from_dir is not None:  # the options the kept checkpoints were trained with
        first = args.from_dir / f"{args.objectives.split(',')[0]}-seed{seeds[0]}" / "toy_training.json"
        if first.exists():
            opts = {k: v for k, v in json.loads(first.read_text())["options"].items() if k not in ("seed", "objective")}
    n = 8 if args.smoke else args.n
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        results = run(seeds, opts, n, args.threads, args.from_dir or args.keep or Path(tmp), 20 if args.smoke else 1000,
                      tuple(args.objectives.split(",")), trained=args.from_dir is not None)
    report = dict(options=opts, seeds=seeds, n=n, smoke=args.smoke, seconds=round(time.time() - start, 1), results=results)
    md = table(results) + "\n\nPer layer (mean ± sd over seeds):\n\n" + layer_table(results)
    print(md)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "table.md").write_text(md + "\n")
        figure(results).savefig(args.out / "gate_experiment.png", dpi=120)
    return report


if __name__ == "__main__":
    main()
