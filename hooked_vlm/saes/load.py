"""Loading SAEs goes through SAELens (never a parser of ours): a local folder or a pretrained release."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def require_sae_lens() -> Any:
    """The ``sae_lens`` module, or an ImportError saying how to install it."""
    try:
        import sae_lens
    except ImportError as e:
        raise ImportError("this needs SAELens: pip install 'hooked_vlm[sae]' (sae-lens requires transformer-lens<4, "
                          "so it goes in a venv with transformer-lens 3.9)") from e
    return sae_lens


def load_sae(name_or_path: str | Path, sae_id: str | None = None, device: str = "cpu", dtype: str | None = None) -> Any:
    """A SAELens SAE from a local folder (``SAE.load_from_disk``: ``cfg.json`` + ``sae_weights.safetensors`` as
    ``sae.save_model`` writes them) or from a pretrained release (``SAE.from_pretrained(release, sae_id)``).

    Any SAELens architecture loads (standard, top-k, JumpReLU, gated, transcoders): SAELens reads
    ``architecture`` from the config and builds the matching class.
    """
    SAE = require_sae_lens().SAE
    path = Path(name_or_path)
    if path.is_dir():
        if not (path / "cfg.json").is_file():
            raise FileNotFoundError(f"{path} holds no cfg.json; a SAELens SAE folder has cfg.json and "
                                    "sae_weights.safetensors (written by sae.save_model(path))")
        return SAE.load_from_disk(str(path), device=device, dtype=dtype)
    if sae_id is None:
        raise ValueError(f"{name_or_path!r} is not a local folder; for a pretrained release pass sae_id= "
                         "(see sae_lens.loading.pretrained_saes_directory.get_pretrained_saes_directory())")
    return SAE.from_pretrained(str(name_or_path), sae_id, device=device, dtype=dtype or "float32")
