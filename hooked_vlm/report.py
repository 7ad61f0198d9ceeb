"""A self-contained HTML report: headings, paragraphs, tables and matplotlib figures as embedded PNGs.

Every figure is also written next to the HTML as its own PNG, so scripts and tests can read it.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any, Sequence

STYLE = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:4px 10px;text-align:right}
th{background:#eee}img{max-width:100%;border:1px solid #ddd}.note{color:#555;font-size:90%}"""


class Report:
    def __init__(self, title: str, out_dir: str | Path):
        self.title = title
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.parts: list[str] = []
        self.figures: list[Path] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def text(self, text: str, note: bool = False) -> None:
        cls = ' class="note"' if note else ""
        self.parts.append(f"<p{cls}>{html.escape(text)}</p>")

    def links(self, *pieces: str | tuple[str, str]) -> None:
        """One paragraph of text pieces and ``(label, href)`` links (relative hrefs: files next to the report)."""
        out = [f"<a href=\"{html.escape(p[1], quote=True)}\">{html.escape(p[0])}</a>" if isinstance(p, tuple)
               else html.escape(p) for p in pieces]
        self.parts.append(f"<p>{''.join(out)}</p>")

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        fmt = lambda v: f"{v:.1f}" if isinstance(v, float) else str(v)
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in r) + "</tr>" for r in rows)
        self.parts.append(f"<table><tr>{head}</tr>{body}</table>")

    def figure(self, fig: Any, name: str, caption: str = "") -> Path:
        """Embed a matplotlib figure (and save it as ``name``.png); the figure is closed."""
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        data = buf.getvalue()
        path = self.out_dir / f"{name}.png"
        path.write_bytes(data)
        self.figures.append(path)
        b64 = base64.b64encode(data).decode("ascii")
        cap = f"<figcaption class=\"note\">{html.escape(caption)}</figcaption>" if caption else ""
        self.parts.append(f"<figure><img alt=\"{html.escape(name)}\" src=\"data:image/png;base64,{b64}\">{cap}</figure>")
        return path

    def write(self, filename: str = "report.html") -> Path:
        path = self.out_dir / filename
        doc = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(self.title)}</title>"
               f"<style>{STYLE}</style></head><body><h1>{html.escape(self.title)}</h1>{''.join(self.parts)}</body></html>")
        path.write_text(doc, encoding="utf-8")
        return path
