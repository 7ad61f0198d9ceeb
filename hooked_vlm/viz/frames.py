"""Interactive plots of the DataFrames that ``patching_sweep`` and ``attention_flow`` return.

Those functions return :class:`PatchingSweepFrame` / :class:`AttentionFlowFrame`: ordinary DataFrames
(every pandas operation on them gives a plain ``pd.DataFrame``) whose notebook display is the
interactive view, and which have ``.view()`` / ``.show()`` (a :class:`~hooked_vlm.viz.View`) and
``.save_view(path)``. ``DataFrame.to_html`` keeps its pandas meaning.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from .document import View

PATCHING_COLUMNS = ("batch", "layer", "logit_diff", "clean_logit_diff", "source_logit_diff", "similarity",
                    "clean_similarity")
FLOW_COLUMNS = ("layer", "head", "role", "weight", "share")


def _records(df: pd.DataFrame, need: tuple[str, ...], what: str) -> list[dict]:
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ValueError(f"{what} needs the columns {list(need)}; this frame lacks {missing} (pass the frame "
                         f"the analysis returned, before filtering its columns)")
    rows = []
    for rec in df.to_dict("records"):
        out = {}
        for k, v in rec.items():
            if hasattr(v, "item"):
                v = v.item()
            out[str(k)] = None if isinstance(v, float) and math.isnan(v) else v
        rows.append(out)
    return rows


def patching_view(df: pd.DataFrame, title: str | None = None) -> View:
    """Logit difference (and similarity to the source) per patched layer, hover for the values; every row below."""
    rows = _records(df, PATCHING_COLUMNS, "patching_view")
    site = ", ".join(sorted({str(r.get("site", "?")) for r in rows}))
    cumulative = any(bool(r.get("cumulative")) for r in rows)
    return View("patching", {"rows": rows, "site": site, "cumulative": cumulative},
                title or f"activation patching sweep ({site}{', cumulative' if cumulative else ''})", height=640)


def flow_view(df: pd.DataFrame, title: str | None = None) -> View:
    """Stacked shares of the key roles per layer (a head selector; -1 = sum over heads), hover for the values."""
    rows = _records(df, FLOW_COLUMNS, "flow_view")
    return View("flow", {"rows": rows}, title or "attention flow: share of the attention to each key role, per layer",
                height=640)


class _ViewFrame(pd.DataFrame):
    # pandas' own _constructor (DataFrame) is kept: derived frames (filters, copies, groupbys) are plain DataFrames
    _view_fn: Any = None

    def view(self, title: str | None = None) -> View:
        return type(self)._view_fn(self, title)

    def show(self, title: str | None = None) -> View:
        """The interactive view (the last line of a notebook cell displays it)."""
        return self.view(title)

    def save_view(self, path: str | Path, title: str | None = None) -> Path:
        """Write the interactive view as one self-contained HTML file."""
        return self.view(title).save(path)

    def _repr_html_(self) -> str:
        return self.view()._repr_html_()


class PatchingSweepFrame(_ViewFrame):
    """The rows of :func:`~hooked_vlm.analysis.patching_sweep`; displays as :func:`patching_view`."""

    _view_fn = staticmethod(patching_view)


class AttentionFlowFrame(_ViewFrame):
    """The rows of :func:`~hooked_vlm.analysis.attention_flow`; displays as :func:`flow_view`."""

    _view_fn = staticmethod(flow_view)
