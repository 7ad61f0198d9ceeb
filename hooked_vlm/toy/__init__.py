"""Toy models shipped with the package (see hooked_vlm.toy.train)."""

from __future__ import annotations

from pathlib import Path

TOY_DIR = Path(__file__).parent / "checkpoints"


def toy_checkpoint_path(name: str) -> Path | None:
    """'toy-llava' (and other shipped names) -> the packaged checkpoint folder, else None."""
    folder = TOY_DIR / name
    return folder if (folder / "config.json").exists() else None
