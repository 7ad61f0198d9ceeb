"""Compare toy LLaVA checkpoints (e.g. the shipped recipe vs ``--recipe llava``) on the known effects:
``python -m experiments.compare_recipes NAME_OR_DIR [NAME_OR_DIR ...] [--threads 1]``.

Prints one markdown table, a column per checkpoint: held-out accuracy (from ``toy_training.json``),
the logit lens at the object's patches per layer (top colour word among the colour words, and top
token of the whole vocabulary; :func:`~hooked_vlm.demo.effects.object_logit_lens`, 200 scenes), the
colour / shape object-patch mean ablation vs random patches (:func:`~hooked_vlm.demo.effects.object_ablation`,
300 scenes) and the object -> answer attention knockout (:func:`~hooked_vlm.demo.effects.object_knockout`,
100 scenes, all layers), the same ablation with the paper's 1-cell buffer around the object, and the
colour probe at the background patches (:func:`~hooked_vlm.demo.effects.background_colour_probe`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from hooked_vlm.demo.effects import background_colour_probe, object_ablation, object_knockout, object_logit_lens
from hooked_vlm.toy import toy_checkpoint_path


def measure(model: Any, folder: Path | None) -> dict[str, str]:
    """Row label -> formatted number for one checkpoint."""
    from tqdm import tqdm

    rows: dict[str, str] = {}
    info = json.loads((folder / "toy_training.json").read_text()) if folder and (folder / "toy_training.json").exists() else {}
    acc = info.get("held_out_accuracy", {})
    rows["held-out exact match colour / shape / position / caption (1,000 scenes)"] = (
        " / ".join(f"{acc[k]:.1f}" for k in ("colour", "shape", "position", "caption")) if acc else "n/a")
    steps = tqdm(["lens colours", "lens all", "ablation", "knockout", "probe"], desc="effects", mininterval=2.0)
    for step in steps:
        if step.startswith("lens"):
            vocab = "colours" if step == "lens colours" else "all"
            for layer, v in object_logit_lens(model, n=200, vocab=vocab).items():
                label = "among colour words" if vocab == "colours" else "over the whole vocabulary"
                rows[f"lens at object patches, {layer}: colour is top {label} (%)"] = f"{v:.1f}"
        elif step == "ablation":
            for buffer, label in ((0, ""), (1, " (+1-cell buffer)")):
                for kind, r in object_ablation(model, n=300, buffer=buffer).items():
                    rows[f"{kind} mean-ablation base -> object{label} / random patches (%)"] = (
                        f"{r['base']:.1f} -> {r['object']:.1f} / {r['random']:.1f}")
        elif step == "probe":
            rows["colour probe from the background patches' LM input, held-out (%)"] = f"{background_colour_probe(model):.1f}"
        else:
            ko = object_knockout(model, n=100)
            for label, r in ko.items():
                rows[f"colour knockout to answer, {label}: base -> object / random / all image (%)"] = (
                    f"{r['base']:.1f} -> {r['object']:.1f} / {r['random']:.1f} / {r['image']:.1f}")
    return rows


def main(argv: list[str] | None = None) -> None:
    from hooked_vlm import HookedVLM

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", help="shipped toy names ('toy-llava') or saved checkpoint folders")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    columns = []
    for name in args.models:
        folder = toy_checkpoint_path(name) or Path(name)
        if not (folder / "config.json").exists():
            raise FileNotFoundError(f"{name!r} is neither a shipped toy nor a checkpoint folder with a config.json")
        columns.append(measure(HookedVLM.from_pretrained(str(folder)), folder))
    print("| | " + " | ".join(args.models) + " |")
    print("|---|" + "---|" * len(args.models))
    for row in columns[0]:
        print(f"| {row} | " + " | ".join(c.get(row, "n/a") for c in columns) + " |")


if __name__ == "__main__":
    main()
