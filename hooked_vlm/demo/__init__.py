"""``hooked-vlm demo``: the command's report (:mod:`.report`) and the toy effects it measures.

Part of the command-line layer, above the analyses and the views: :mod:`.effects` (the toy LLaVA's object ablation,
logit lens, knockout, attention flow), :mod:`.gate_effects` (the native toys' narrow-gate knockouts, code
replacement, EOI logit lens) and :mod:`.separation` (modality separation) measure the shipped toys with
:mod:`hooked_vlm.analysis`; :func:`run_demo` writes them as one HTML report. The core (the model, spans, SAEs and the
toys themselves, :mod:`hooked_vlm.toy`) never imports this package. The research experiments built on the same
measurements (the gate experiment, recipe comparisons, modality separation over every toy) live outside the
package, in the repository's ``experiments/`` folder.
"""

from __future__ import annotations

from .report import DEMO_SEED, run_demo

__all__ = ["DEMO_SEED", "run_demo"]
