"""The shipped toy LLaVA SAE (``toy-llava-sae``): where it is, and the scene generator's ground truth per patch.

Every image token of a toy scene is one patch of the 6 x 6 grid; the generator knows which patches the object covers
(:meth:`ToyObject.patches`, any coverage), so :func:`patch_labels` gives each patch a colour and a shape label (the
object's, or ``background``) and a position (its quadrant of the grid, the toy's position answer). What the SAE's
features detect, scored against these labels, is an experiment outside the package
(``python -m experiments.toy_sae_features``).
"""

from __future__ import annotations

import numpy as np

from . import TOY_DIR
from .data import GRID, ToyScene

SAE_DIR = TOY_DIR / "toy-llava-sae"
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
HELD_OUT_SEED = 12345  # the toy's held-out scene seed (toy-llava/toy_training.json); the SAE trains on seed 0


def patch_labels(scene: ToyScene) -> dict[str, np.ndarray]:
    """Per patch (row-major, GRID * GRID): colour, shape (the object's or 'background') and quadrant."""
    colour = np.full(GRID * GRID, "background", dtype=object)
    shape = colour.copy()
    for o in scene.objects:
        colour[o.patches()] = o.colour
        shape[o.patches()] = o.shape
    rows, cols = np.divmod(np.arange(GRID * GRID), GRID)
    quadrant = np.array([f"{'top' if r < GRID / 2 else 'bottom'} {'left' if c < GRID / 2 else 'right'}"
                         for r, c in zip(rows, cols)], dtype=object)
    return dict(colour=colour, shape=shape, position=quadrant)
