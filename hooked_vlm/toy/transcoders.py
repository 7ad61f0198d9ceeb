"""``toy-llava-transcoders``: per-layer skip transcoders of the toy LLaVA, how they are trained and loaded.

Training (SAELens's trainer, :mod:`hooked_vlm.saes.transcoder_train`): ``blocks.{l}.ln2.hook_normalized`` ->
``blocks.{l}.hook_mlp_out`` at every position of colour and shape prompts about toy scenes (seed 0). What their
attribution graphs show on held-out scenes is an experiment outside the package (``experiments/toy_transcoders.py``).

    python -m hooked_vlm.toy.transcoders train [--scenes 200] [--d-sae 512] [--samples 100000]   (needs sae-lens)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from . import TOY_DIR
from .data import make_scenes, prompt

TRANSCODER_DIR = TOY_DIR / "toy-llava-transcoders"


def train(out: Path = TRANSCODER_DIR, n_scenes: int = 200, d_sae: int = 512, samples: int = 100_000,
          l1_coefficient: float = 2.0, lr: float = 1e-3, seed: int = 0) -> list[Path]:
    from .. import HookedVLM
    from ..saes.transcoder_train import VLMPairStore, train_transcoder

    model = HookedVLM.from_pretrained("toy-llava")
    scenes = make_scenes(n_scenes, seed=seed)
    dataset = [(s.pil(), prompt(kind)) for s in scenes for kind in ("colour", "shape")]
    folders = []
    for layer in range(model.cfg.n_layers):
        store = VLMPairStore(model, dataset, f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out",
                             "all", model_batch_size=50, progress=False, cache_in_memory=True, train_batch_size=1024,
                             seed=seed)
        folder = Path(out) / f"layer_{layer}"
        train_transcoder(store, d_sae, samples, l1_coefficient=l1_coefficient, lr=lr, seed=seed, out=folder,
                         metadata=dict(model_name="toy-llava", scenes=n_scenes, scene_seed=seed))
        folders.append(folder)
    return folders


def load(folder: Path = TRANSCODER_DIR) -> list[Any]:
    """The shipped transcoders as SAELens ``SkipTranscoder`` objects, layer order (needs sae-lens)."""
    from ..saes.load import load_sae

    layers = sorted(Path(folder).glob("layer_*"), key=lambda p: int(p.name.split("_")[1]))
    if not layers:
        raise FileNotFoundError(f"{folder} holds no layer_<l> transcoder folders; train them: "
                                "python -m hooked_vlm.toy.transcoders train")
    return [load_sae(p) for p in layers]


def main(argv: list[str] | None = None) -> list[Path]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--out", type=Path, default=TRANSCODER_DIR)
    t.add_argument("--scenes", type=int, default=200)
    t.add_argument("--d-sae", type=int, default=512)
    t.add_argument("--samples", type=int, default=100_000)
    t.add_argument("--l1", type=float, default=2.0)
    t.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args(argv)
    folders = train(args.out, args.scenes, args.d_sae, args.samples, args.l1, args.lr)
    print("\n".join(str(f) for f in folders))
    return folders


if __name__ == "__main__":
    main()
