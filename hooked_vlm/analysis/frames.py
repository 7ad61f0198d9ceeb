"""The DataFrames that :func:`~hooked_vlm.analysis.patching_sweep` and :func:`~hooked_vlm.analysis.attention_flow`
return: plain results that know how to show themselves.

:class:`PatchingSweepFrame` / :class:`AttentionFlowFrame` are ordinary DataFrames (every pandas operation on them
gives a plain ``pd.DataFrame``) whose notebook display is the interactive view, with ``.view()`` / ``.show()`` (a
:class:`~hooked_vlm.viz.View`) and ``.save_view(path)``. ``DataFrame.to_html`` keeps its pandas meaning. The views
(:func:`hooked_vlm.viz.patching_view`, :func:`hooked_vlm.viz.flow_view`) are imported only when a frame is shown:
the analysis layer never imports :mod:`hooked_vlm.viz` at module level (views import analyses, not the reverse).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd


class _ViewFrame(pd.DataFrame):
    # pandas' own _constructor (DataFrame) is kept: derived frames (filters, copies, groupbys) are plain DataFrames
    _view_name: str = ""  # the function of hooked_vlm.viz.frames that draws this frame

    def view(self, title: str | None = None) -> Any:
        from ..viz import frames as views  # lazily: the view layer depends on the analyses, not the reverse

        return getattr(views, type(self)._view_name)(self, title)

    def show(self, title: str | None = None) -> Any:
        """The interactive view (the last line of a notebook cell displays it)."""
        return self.view(title)

    def save_view(self, path: str | Path, title: str | None = None) -> Path:
        """Write the interactive view as one self-contained HTML file."""
        return self.view(title).save(path)

    def _repr_html_(self) -> str:
        return self.view()._repr_html_()


class PatchingSweepFrame(_ViewFrame):
    """The rows of :func:`~hooked_vlm.analysis.patching_sweep`; displays as :func:`~hooked_vlm.viz.patching_view`."""

    _view_name = "patching_view"


class AttentionFlowFrame(_ViewFrame):
    """The rows of :func:`~hooked_vlm.analysis.attention_flow`; displays as :func:`~hooked_vlm.viz.flow_view`."""

    _view_name = "flow_view"
