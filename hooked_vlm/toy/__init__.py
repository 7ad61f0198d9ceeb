"""Toy models shipped with the package: toy-llava (hooked_vlm.toy.train), toy-chameleon and toy-chameleon-gen (hooked_vlm.toy.train_native).

Here: the checkpoints, the scene generator (:mod:`.data`), the question tasks (:mod:`.tasks`), the training recipes
(:mod:`.train`, :mod:`.recipe_llava`, :mod:`.train_native`, :mod:`.vq_fit`) and the shipped SAE / transcoders
(:mod:`.sae_features`, :mod:`.transcoders`). Part of the core: nothing here imports the analyses. The effects the
``hooked-vlm demo`` report measures on the toys are :mod:`hooked_vlm.demo`; the research experiments run on them are
the repository's ``experiments/`` folder.
"""

from __future__ import annotations

import difflib
from pathlib import Path

TOY_DIR = Path(__file__).parent / "checkpoints"


def shipped_toys() -> list[str]:
    """Names of the toy checkpoints shipped with the package (folders of TOY_DIR holding a config.json)."""
    if not TOY_DIR.is_dir():
        return []
    return sorted(p.name for p in TOY_DIR.iterdir() if (p / "config.json").exists())


def toy_checkpoint_path(name: str) -> Path | None:
    """A shipped toy name ('toy-llava', 'toy-chameleon') -> its packaged checkpoint folder, else None."""
    return TOY_DIR / name if name in shipped_toys() else None


def closest_toy(name: str) -> str | None:
    """The shipped toy name closest to ``name`` (a typo such as 'toy-chamelon'), or None when none is close."""
    close = difflib.get_close_matches(name.lower(), shipped_toys(), n=1, cutoff=0.6)
    return close[0] if close else None
