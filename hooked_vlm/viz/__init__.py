"""Interactive views: one self-contained HTML document each (inline JS/CSS, embedded PNG and JSON, no network).

* :func:`lens_view` / :func:`lens_view_for`: logit lens on the patch grid (``LogitLensResult.show()``).
* :func:`attention_view`: a query's attention over the image and the text, per layer and head.
* :func:`patching_view`, :func:`flow_view`: the DataFrames of ``patching_sweep`` / ``attention_flow``
  (which display these views in notebooks themselves).
* :func:`graph_view`: an attribution graph with the image's patches as input nodes drawn on the image
  (``AttributionGraph.show()``).
* :func:`compare_predictions`: next-token predictions of clean vs edited runs (``span_ablation``,
  ``attention_knockout``, ``activation_patching`` logits), with the edited span drawn on the image.

:func:`write_views` writes the lens and attention views of one input side by side (``hooked-vlm view``).

Every view is a :class:`View`: ``.save(path)``, ``.html``, ``.open()``; the last line of a notebook cell shows it.
"""

from .attention import attention_view
from .bundle import write_views
from .document import View, save_html, seen_image
from .graph import graph_view
from .frames import AttentionFlowFrame, PatchingSweepFrame, flow_view, patching_view
from .lens import lens_view, lens_view_for
from .predictions import PredictionComparison, compare_predictions

__all__ = ["View", "save_html", "lens_view", "lens_view_for", "attention_view", "graph_view", "patching_view", "flow_view",
           "PatchingSweepFrame", "AttentionFlowFrame", "compare_predictions", "PredictionComparison", "write_views", "seen_image"]
