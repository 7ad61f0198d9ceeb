"""The lens and attention views of one input, written side by side (what ``hooked-vlm view`` and the demo write)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .attention import attention_view
from .document import seen_image
from .lens import lens_view_for


def write_views(model: Any, inputs: dict, out: str | Path, image: Any = None, *,
                targets: Sequence[int] | Sequence[str] | None = None, layers: Sequence[int] | None = None,
                top_k: int = 5) -> tuple[Path, Path]:
    """Write the logit-lens view to ``out`` (e.g. ``view.html``) and the attention view of the last position to
    ``<out stem>_attention.html`` beside it; each links to the other. ``image`` is used only when the image as
    the model saw it cannot be rebuilt from ``pixel_values``. ``layers``: lens layers (0..n_layers); the
    attention view shows every block. Returns both paths."""
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"--out / out must name an .html file, got {str(out)!r}")
    att_path = out.with_name(out.stem + "_attention.html")
    picture = seen_image(model, inputs, fallback=image)
    lens = lens_view_for(model, inputs, picture, targets=targets, top_k=top_k, layers=layers)
    att = attention_view(model, inputs, image=picture)
    lens.link("attention view of the same input", att_path.name).save(out)
    att.link("logit-lens view of the same input", out.name).save(att_path)
    return out, att_path
