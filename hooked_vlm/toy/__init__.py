"""Toy models shipped with the package: toy-llava (hooked_vlm.toy.train) and toy-chameleon (hooked_vlm.toy.train_native)."""

from __future__ import annotations

from pathlib import Path

TOY_DIR = Path(__file__).parent / "checkpoints"


def toy_checkpoint_path(name: str) -> Path | None:
    """A shipped toy name ('toy-llava', 'toy-chameleon') -> its packaged checkpoint folder, else None."""
    folder = TOY_DIR / name
    return folder if (folder / "config.json").exists() else None
