"""Analyses of the two reference papers, one call each, built from hook functions you can copy.

Every analysis uses only hook names and :class:`~hooked_vlm.spans.TokenSpans`, so it works on
every family. Spans may be names (``"image"``, ``"eoi"``, ``"last"``), derived names
(``"image_last"``, ``"after_image"``, ...: see :mod:`hooked_vlm.span_select`, the core module that resolves
them; its names are re-exported here), bool masks or position lists. Analyses return plain results (tensors,
DataFrames, result objects); the views of :mod:`hooked_vlm.viz` import the analyses, never the reverse (a
result's ``.show()`` imports its view when called).
"""

from ._common import (DERIVED, SpanLike, forward_with_hooks, grid_cells_mask, image_region_mask, layer_list,
                      prompt_span, query_rows, random_span, span_mask, spans_of)
from .attribution import PatchAttributionResult, patch_attribution
from .attribution_patching import (AttributionPatchingResult, attribution_patching, exact_patching,
                                   last_logit_diff_metric, rank_correlation)
from .attention_flow import (attention_flow, attention_flow_frame, default_key_roles, flow_hook, plot_attention_flow,
                             role_masks, summarise_flow)
from .graph import AttributionGraph, TranscoderSet, attribution_graph
from .gate import candidate_span, find_gate, gate_frame
from .modality import (abs_cosine, adp_clusters, cluster_homogeneity, collect_span_vectors, label_overlap,
                       modality_separation, neighbourhood_overlap)
from .ablation import ablation_hook, high_norm_span, mean_activation, span_ablation, span_activations
from .knockout import (attention_knockout, blocked_edges, knockout_generate, knockout_hooks, layer_windows,
                       mask_knockout_hook, zero_knockout_hook)
from .logit_lens import LogitLensResult, lens_logits, lens_readout, logit_lens, model_image_codes, readout_ids
from .patching import (SITES, activation_patching, distribution_similarity, flip_fraction, last_logits, logit_diff,
                       patch_hook, patching_sweep, site_hook_names, source_activations, steer, steering_hook,
                       steering_vector)
from .runner import collate, iterate_batches, run_dataset, save_results

__all__ = [
    "DERIVED", "SpanLike", "forward_with_hooks", "grid_cells_mask", "image_region_mask", "layer_list", "query_rows",
    "prompt_span", "random_span", "span_mask", "spans_of",
    "PatchAttributionResult", "patch_attribution",
    "AttributionPatchingResult", "attribution_patching", "exact_patching", "last_logit_diff_metric", "rank_correlation",
    "attention_flow", "attention_flow_frame", "default_key_roles", "flow_hook", "plot_attention_flow", "role_masks",
    "summarise_flow",
    "AttributionGraph", "TranscoderSet", "attribution_graph",
    "candidate_span", "find_gate", "gate_frame",
    "abs_cosine", "adp_clusters", "cluster_homogeneity", "collect_span_vectors", "label_overlap",
    "modality_separation", "neighbourhood_overlap",
    "ablation_hook", "high_norm_span", "mean_activation", "span_ablation", "span_activations",
    "attention_knockout", "blocked_edges", "knockout_generate", "knockout_hooks", "layer_windows",
    "mask_knockout_hook", "zero_knockout_hook",
    "LogitLensResult", "lens_logits", "lens_readout", "logit_lens", "model_image_codes", "readout_ids",
    "SITES", "activation_patching", "distribution_similarity", "flip_fraction", "last_logits", "logit_diff",
    "patch_hook", "patching_sweep", "site_hook_names", "source_activations", "steer", "steering_hook",
    "steering_vector",
    "collate", "iterate_batches", "run_dataset", "save_results",
]
