"""Self-contained HTML documents: inline CSS/JS (package data under ``assets/``), data as embedded JSON.

Every view is one file that works offline: no CDN, no network. Numeric arrays travel as base64 of
little-endian typed arrays (``pack_*``), the image as an embedded PNG (``image_data_url``). In a
notebook :meth:`View._repr_html_` wraps the document in an ``<iframe srcdoc>``, so several views in
one notebook never share element ids, scripts or styles.
"""

from __future__ import annotations

import base64
import html
import io
import json
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

#: quantised probabilities: value q in 0..PROB_SCALE means q / PROB_SCALE; PROB_NAN means "not available"
PROB_SCALE = 65534
PROB_NAN = 65535


def asset(name: str) -> str:
    """Text of a shipped asset (``hooked_vlm/viz/assets/NAME``)."""
    return resources.files("hooked_vlm.viz").joinpath("assets", name).read_text(encoding="utf-8")


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def pack_probs(p: Any) -> str:
    """Probabilities (any shape, NaN allowed) -> base64 of uint16 (q / PROB_SCALE; PROB_NAN for NaN)."""
    a = np.asarray(p, dtype=np.float64)
    q = np.where(np.isnan(a), PROB_NAN, np.rint(np.clip(np.nan_to_num(a), 0.0, 1.0) * PROB_SCALE))
    return _b64(q.astype("<u2"))


def pack_ints(a: Any) -> str:
    """Integers -> base64 of int32 little-endian."""
    return _b64(np.asarray(a).astype("<i4"))


def pack_u16(a: Any) -> str:
    """Integers in 0..65535 -> base64 of uint16 little-endian."""
    return _b64(np.asarray(a).astype("<u2"))


def pack_floats(a: Any) -> str:
    """Floats -> base64 of float32 little-endian."""
    return _b64(np.asarray(a, dtype=np.float64).astype("<f4"))


def pack_bytes(a: Any) -> str:
    """Values in 0..255 -> base64 of uint8."""
    return _b64(np.asarray(a).astype(np.uint8))


def image_data_url(image: Any, max_side: int = 448) -> str | None:
    """A PIL image / HxWx3 array (uint8 or float in [0, 1]) as a PNG data URL, at most ``max_side`` px a side."""
    if image is None:
        return None
    from PIL import Image

    if not isinstance(image, Image.Image):
        arr = np.asarray(image)
        if arr.dtype != np.uint8:
            if arr.max() > 1.0 + 1e-6:
                raise ValueError(f"a float image must hold values in [0, 1]; got max {arr.max():.3g} (pass uint8 for 0..255)")
            arr = np.rint(arr * 255).astype(np.uint8)
        if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):  # CHW -> HWC
            arr = arr.transpose(1, 2, 0)
        image = Image.fromarray(arr.squeeze())
    image = image.convert("RGB")
    if max(image.size) > max_side:
        s = max_side / max(image.size)
        image = image.resize((max(1, round(image.width * s)), max(1, round(image.height * s))))
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _json_script(data: Any) -> str:
    # "</script>" or "<!--" inside a string would end the script element: escape every "<", ">" and "&"
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


class View:
    """One self-contained HTML document (``.html``); shows itself in Jupyter/Colab (``_repr_html_``)."""

    def __init__(self, kind: str, data: dict, title: str, height: int = 720):
        self.kind, self.data, self.title, self.height = kind, data, title, height
        self.links: list[tuple[str, str]] = []  # (label, href) shown under the title, e.g. to a sibling view

    def link(self, label: str, href: str) -> "View":
        """Add a link under the title (relative hrefs work between views saved in one folder); returns self."""
        self.links.append((label, href))
        return self

    @property
    def html(self) -> str:
        """The whole document as a string."""
        payload = dict(self.data, kind=self.kind, title=self.title)
        return (
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(self.title)}</title><style>{asset('view.css')}</style></head>"
            f"<body><h1 id=\"title\">{html.escape(self.title)}</h1>{self._links_html()}<div id=\"app\"></div>"
            f"<div id=\"tooltip\" class=\"tooltip\" hidden></div>"
            f"<script type=\"application/json\" id=\"hv-data\">{_json_script(payload)}</script>"
            f"<script>{asset('common.js')}</script><script>{asset(self.kind + '.js')}</script>"
            "</body></html>"
        )

    def _links_html(self) -> str:
        if not self.links:
            return ""
        items = " · ".join(f"<a href=\"{html.escape(h, quote=True)}\">{html.escape(t)}</a>" for t, h in self.links)
        return f"<p class=\"links\">{items}</p>"

    def save(self, path: str | Path) -> Path:
        """Write the document to ``path`` (parent folders are created); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.html, encoding="utf-8")
        return path

    def _repr_html_(self) -> str:
        return (f"<iframe srcdoc=\"{html.escape(self.html, quote=True)}\" title=\"{html.escape(self.title)}\" "
                f"style=\"width:100%;height:{self.height}px;border:1px solid #ddd\"></iframe>")

    def open(self, path: str | Path | None = None) -> Path:
        """Write the document (to a temporary file unless ``path``) and open it in the default web browser."""
        import tempfile
        import webbrowser

        if path is None:
            path = Path(tempfile.mkdtemp(prefix="hooked_vlm_view_")) / f"{self.kind}.html"
        path = self.save(path)
        webbrowser.open(path.resolve().as_uri())
        return path

    def __repr__(self) -> str:
        return f"View({self.kind!r}, {self.title!r}, {len(self.html) / 1e3:.0f} kB)"


def save_html(obj: Any, path: str | Path) -> Path:
    """Write any view (or an object with ``.view()``) to ``path``."""
    view = obj if isinstance(obj, View) else obj.view()
    return view.save(path)


def seen_image(model: Any, inputs: dict, fallback: Any = None, batch: int = 0) -> Any:
    """The first image of batch item ``batch`` as the model saw it (HxWx3 floats in [0, 1]): its ``pixel_values``
    with the image processor's normalisation undone (so a centre crop shows cropped). Layouts that are not
    [batch, (tiles,) 3, H, W] (e.g. Qwen2-VL's flattened patches) give ``fallback``."""
    pv = inputs.get("pixel_values")
    if pv is None or not hasattr(pv, "ndim") or pv.ndim not in (4, 5) or pv.shape[-3] != 3:
        return fallback
    x = (pv[batch] if pv.ndim == 4 else pv[batch, 0]).detach().float().cpu().numpy()  # [3, H, W]
    ip = getattr(getattr(model, "processor", None), "image_processor", None)
    mean = np.asarray(getattr(ip, "image_mean", None) or (0.0, 0.0, 0.0), dtype=np.float64)
    std = np.asarray(getattr(ip, "image_std", None) or (1.0, 1.0, 1.0), dtype=np.float64)
    rescale = float(getattr(ip, "rescale_factor", None) or 1 / 255)
    img = (x.transpose(1, 2, 0) * std + mean) / (rescale * 255)
    return np.clip(img, 0.0, 1.0)
