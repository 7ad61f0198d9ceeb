"""Attribution graphs through images: transcoders replace the MLPs, attention and norms are frozen, and every edge
between input embeddings (text tokens and image patches), transcoder features, error nodes and logits is an exact
linear effect (Ameisen et al. 2025, "Circuit tracing"; circuit-tracer's method and file formats).
See docs/attribution_graphs.md."""

from .attribute import attribution_graph, logit_targets
from .features import top_activating, transcoder_feature_acts
from .graph import AttributionGraph, LogitTargets, PruneResult, influence
from .interventions import Intervention, feature_intervention, predicted_logit_change
from .replacement import CleanRun, clean_run, frozen_hooks, replacement_forward, replacement_logits
from .transcoders import TranscoderSet, as_transcoder_set

__all__ = ["attribution_graph", "logit_targets", "AttributionGraph", "LogitTargets", "PruneResult", "influence",
           "Intervention", "feature_intervention", "predicted_logit_change",
           "CleanRun", "clean_run", "frozen_hooks", "replacement_forward", "replacement_logits", "TranscoderSet",
           "as_transcoder_set", "top_activating", "transcoder_feature_acts"]
