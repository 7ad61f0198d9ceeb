"""Modality separation on the shipped toys (the Narrow Gate paper's analysis 1):
``python -m experiments.separation [--out DIR] [--n 200]``.

For toy-llava, toy-chameleon and toy-chameleon-gen, on the colour question about ``n`` held-out
scenes: per LM layer (each block's output, no final norm), the median and quartiles of |cos|
between one random image token and one random text token after the image of the same scene, and
the homogeneity of a 2-cluster k-means of the pooled vectors against the modality labels
(:func:`~hooked_vlm.analysis.modality_separation`, through :func:`hooked_vlm.demo.separation.separation`, which the
demo report shows too). Homogeneity 1: the two modalities fall in different clusters; 0: the clusters ignore
modality. One figure, two panels, layers on relative depth so that 2- and 4-layer models share the axis.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import torch

from hooked_vlm.demo.separation import SEED, TOYS, figure, separation

__all__ = ["SEED", "TOYS", "figure", "main", "separation"]


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    from hooked_vlm import HookedVLM

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(TOYS), help="comma-separated shipped toy names or checkpoint folders")
    ap.add_argument("--n", type=int, default=200, help="held-out scenes (one image and one text token each)")
    ap.add_argument("--out", type=Path, default=None, help="write separation.json and modality_separation.png here")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    frames = {name: separation(HookedVLM.from_pretrained(name), args.n) for name in args.models.split(",")}
    result = {name: df.round(4).to_dict("records") for name, df in frames.items()}
    for name, df in frames.items():
        print(f"{name}\n{df.round(3).to_string(index=False)}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "separation.json").write_text(json.dumps(dict(n=args.n, seed=SEED, models=result), indent=2) + "\n")
        figure(frames).savefig(args.out / "modality_separation.png", dpi=120)
    return result


if __name__ == "__main__":
    main()
