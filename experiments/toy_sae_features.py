"""What the toy LLaVA's SAE (``toy-llava-sae``) learned, scored against the scene generator's ground truth.

Every image token of a toy scene is one patch of the 6 x 6 grid; the generator knows which patches
the object covers (:meth:`ToyObject.patches`, any coverage), so each patch has a colour and a shape
label (the object's, or ``background``) and a position (its quadrant of the grid, the toy's
position answer). A feature's *purity* for a label is the share of its total activation, summed
over every image token of held-out scenes, that falls on patches with that label. A feature is a
colour / shape / position detector when one colour / shape / quadrant holds >= ``threshold`` of it
(background does not count as a colour or shape). Features that fire on fewer than ``min_tokens``
tokens are counted as dead and never detectors.

    python -m experiments.toy_sae_features            # the table of docs/toy_models.md
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hooked_vlm.toy.data import COLOURS, GRID, SHAPES, ToyScene, make_scenes, prompt
from hooked_vlm.toy.sae_features import HELD_OUT_SEED, QUADRANTS, SAE_DIR, patch_labels
from hooked_vlm.toy.tasks import ToyEncoder, accuracy, hooked_logits_fn


@torch.no_grad()
def image_token_activations(model: Any, scenes: list[ToyScene], hook_name: str, batch_size: int = 50,
                            progress: bool = False) -> tuple[Tensor, Any]:
    """Activations [n, d] of ``hook_name`` at every image token of ``scenes`` and their index (store rows)."""
    from hooked_vlm.saes.store import VLMActivationStore

    store = VLMActivationStore(model, [(s.pil(), prompt("colour")) for s in scenes], hook_name, "image", batch_size,
                               progress=progress, shuffle=False, n_epochs=1, train_batch_size=4096)
    chunk = store.collect()
    return chunk.acts, chunk.frame()


@torch.no_grad()
def feature_purity(sae: Any, acts: Tensor, index: Any, scenes: list[ToyScene], min_tokens: int = 20) -> Any:
    """One row per feature: tokens it fires on, and the best colour / shape / position with its purity."""
    import pandas as pd

    feats = sae.encode(acts.to(sae.device, sae.dtype)).float().cpu()  # [n, d_sae]
    labels = [patch_labels(s) for s in scenes]
    cell = (index["grid_row"].to_numpy() * GRID + index["grid_col"].to_numpy())
    items = index["item"].to_numpy()
    rows: dict[str, Any] = {"feature": np.arange(feats.shape[1]), "tokens": (feats > 0).sum(0).numpy()}
    total = feats.sum(0).numpy()
    for attr, classes in (("colour", tuple(COLOURS)), ("shape", SHAPES), ("position", QUADRANTS)):
        lab = np.array([labels[i][attr][c] for i, c in zip(items, cell)], dtype=object)
        share = np.stack([feats[torch.as_tensor(lab == k)].sum(0).numpy() for k in classes], 1)
        share = share / np.maximum(total, 1e-12)[:, None]
        rows[f"{attr}"] = np.array(classes, dtype=object)[share.argmax(1)]
        rows[f"{attr}_purity"] = share.max(1)
        if attr == "colour":
            rows["background_purity"] = feats[torch.as_tensor(lab == "background")].sum(0).numpy() / np.maximum(total, 1e-12)
    df = pd.DataFrame(rows)
    df["alive"] = df["tokens"] >= min_tokens
    return df


def purity_counts(df: Any, threshold: float = 0.9) -> dict[str, Any]:
    """How many live features are colour / shape / position / background detectors at ``threshold``,
    which colours / shapes / quadrants they detect, and how many are colour and shape detectors at once."""
    alive = df[df["alive"]]
    out: dict[str, Any] = {"features": int(len(df)), "alive": int(len(alive)), "threshold": threshold}
    for attr in ("colour", "shape", "position"):
        det = alive[alive[f"{attr}_purity"] >= threshold]
        out[attr] = int(len(det))
        out[f"{attr}_classes"] = {str(k): int(v) for k, v in det[attr].value_counts().sort_index().items()}
    out["colour_and_shape"] = int(((alive["colour_purity"] >= threshold) & (alive["shape_purity"] >= threshold)).sum())
    out["background"] = int((alive["background_purity"] >= threshold).sum())
    return out


@torch.no_grad()
def reconstruction(sae: Any, acts: Tensor) -> dict[str, float]:
    """Mean squared error per element, variance explained and mean L0 of ``sae`` on ``acts``."""
    x = acts.to(sae.device, sae.dtype)
    feats = sae.encode(x)
    err = sae.decode(feats) - x
    return dict(mse=float(err.pow(2).mean()), variance_explained=float(1 - err.pow(2).sum() / (x - x.mean(0)).pow(2).sum()),
                l0=float((feats > 0).float().sum(-1).mean()), mean_sq_activation=float(x.pow(2).mean()))


def accuracy_with_sae(model: Any, sae: Any, scenes: list[ToyScene], hook_name: str,
                      kinds: tuple[str, ...] = ("colour", "shape", "position")) -> dict[str, dict[str, float]]:
    """Held-out exact-match accuracy (%) per kind: plain, and with the SAE spliced in at the image tokens."""
    enc = ToyEncoder(model.processor)
    plain = accuracy(hooked_logits_fn(model), enc, scenes, kinds)
    with model.saes([sae], spans="image", hook_name=hook_name, use_error_term=False):
        spliced = accuracy(hooked_logits_fn(model), enc, scenes, kinds)
    return dict(plain=plain, sae=spliced)


def main(argv: list[str] | None = None) -> dict:
    from hooked_vlm import HookedVLM
    from hooked_vlm.saes.train import load_sae

    ap = argparse.ArgumentParser(description="Score the toy SAE's features against the toy scenes' ground truth")
    ap.add_argument("--sae", default=str(SAE_DIR))
    ap.add_argument("--n", type=int, default=1000, help="held-out scenes")
    ap.add_argument("--seed", type=int, default=HELD_OUT_SEED)
    ap.add_argument("--threshold", type=float, default=0.9)
    args = ap.parse_args(argv)
    model = HookedVLM.from_pretrained("toy-llava")
    sae = load_sae(args.sae)
    hook_name = sae.cfg.metadata.hook_name
    scenes = make_scenes(args.n, args.seed)
    acts, index = image_token_activations(model, scenes, hook_name, progress=True)
    df = feature_purity(sae, acts, index, scenes)
    result = dict(hook_name=hook_name, n_scenes=args.n, seed=args.seed, counts=purity_counts(df, args.threshold),
                  reconstruction=reconstruction(sae, acts), accuracy=accuracy_with_sae(model, sae, scenes, hook_name))
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
