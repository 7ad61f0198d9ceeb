"""Interactive plots of the DataFrames that ``patching_sweep`` and ``attention_flow`` return.

Those functions return :class:`~hooked_vlm.analysis.frames.PatchingSweepFrame` /
:class:`~hooked_vlm.analysis.frames.AttentionFlowFrame` (defined with the analyses, re-exported here): ordinary
DataFrames (every pandas operation on them gives a plain ``pd.DataFrame``) whose notebook display is the
interactive view drawn here, and which have ``.view()`` / ``.show()`` (a :class:`~hooked_vlm.viz.View`) and
``.save_view(path)``. ``DataFrame.to_html`` keeps its pandas meaning.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from ..analysis.frames import AttentionFlowFrame, PatchingSweepFrame
from .document import View

__all__ = ["AttentionFlowFrame", "PatchingSweepFrame", "flow_view", "patching_view"]

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
