"""Interactive attribution-graph view: the image's patches are input nodes drawn on the image, the text tokens sit
under the graph, transcoder features and error nodes are placed by (layer, position), the logits on top.

Clicking a node lights up what feeds it (patches on the image, tokens, earlier features and errors, coloured by
their direct effect ``adjacency[node, source]``) and what it drives (later features, the logits: coloured by
``adjacency[target, node]``); hovering shows a node's details and its edge to the selected node; a colour bar for
each direction. With nothing selected (the start, or a click on the background) the patches show each input's
influence on the logits (:meth:`~hooked_vlm.analysis.graph.AttributionGraph.influence`).

Which nodes are drawn: circuit-tracer's pruning (:meth:`AttributionGraph.prune`, ``node_threshold``,
``edge_threshold``) picks the features, errors and logits; every input is drawn. Every nonzero entry of the
adjacency between two drawn nodes is an edge of the view (pruning chooses nodes, not the edges shown), up to
``max_edges`` (the largest ``|weight|`` are kept and the view says how many were left out).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .document import View, image_data_url, pack_bytes, pack_floats, pack_ints

KIND_CODES = {"feature": 0, "error": 1, "input": 2, "logit": 3}


def _kept_nodes(graph: Any, node_threshold: float, edge_threshold: float) -> torch.Tensor:
    node_mask = graph.prune(node_threshold, edge_threshold).node_mask.clone()
    node_mask[graph.input_offset: graph.logit_offset] = True  # every input is drawn (patches on the image)
    node_mask[graph.logit_offset:] = True
    return node_mask.nonzero()[:, 0]


def graph_view(graph: Any, image: Any = None, *, node_threshold: float = 0.8, edge_threshold: float = 0.98,
               image_index: int = 0, tile: int = 0, max_edges: int = 200_000, title: str | None = None) -> View:
    """Interactive view of an :class:`~hooked_vlm.analysis.graph.AttributionGraph` (see the module docstring).

    ``image``: the picture as the model saw it (PIL or array; :func:`hooked_vlm.viz.seen_image` rebuilds it from
    ``pixel_values``), under the patch grid of image ``image_index`` (``tile`` of a tiled image).
    """
    if max_edges < 1:
        raise ValueError(f"max_edges must be >= 1, got {max_edges}")
    kept = _kept_nodes(graph, node_threshold, edge_threshold)
    kinds = [graph.kind(int(i)) for i in kept]
    layer = np.full(len(kept), -1, dtype=np.int64)
    pos = np.full(len(kept), -1, dtype=np.int64)
    feat = np.full(len(kept), -1, dtype=np.int64)
    act = np.full(len(kept), np.nan)
    for j, (i, kind) in enumerate(zip(kept.tolist(), kinds)):
        if kind == "feature":
            layer[j], pos[j], feat[j] = graph.features[i].tolist()
            act[j] = float(graph.activations[i])
        elif kind == "error":
            layer[j], pos[j] = divmod(i - graph.error_offset, graph.n_pos)
        elif kind == "input":
            pos[j] = i - graph.input_offset
        else:
            layer[j], pos[j], feat[j] = graph.n_layers, graph.position, i - graph.logit_offset

    sub = graph.adjacency[kept][:, kept].float()  # [kept target, kept source]
    dst, src = sub.nonzero(as_tuple=True)
    w = sub[dst, src]
    n_edges = int(w.numel())
    if n_edges > max_edges:
        top = torch.topk(w.abs(), max_edges).indices
        dst, src, w = dst[top], src[top], w[top]

    g = graph.spans.grid[0].cpu() if graph.spans is not None else torch.full((graph.n_pos, 4), -1)
    on_image = (g[:, 0] == image_index) & (g[:, 1] == tile) & (g[:, 2] >= 0)
    grid = {"rows": int(g[on_image, 2].max()) + 1, "cols": int(g[on_image, 3].max()) + 1} if bool(on_image.any()) else None
    cells = [[int(g[p, 2]), int(g[p, 3])] if bool(on_image[p]) else None for p in range(graph.n_pos)]
    roles = ["image" if int(g[p, 2]) >= 0 else "text" for p in range(graph.n_pos)]
    data = {
        "n_layers": graph.n_layers, "n_pos": graph.n_pos, "position": graph.position,
        "labels": [str(t) for t in graph.str_tokens], "roles": roles, "cells": cells, "grid": grid,
        "image": image_data_url(image),
        "logit_labels": list(graph.logit_targets.labels),
        "logit_probs": [float(x) for x in graph.logit_targets.weights.tolist()],
        "node": pack_ints(kept.numpy()), "node_kind": pack_bytes([KIND_CODES[k] for k in kinds]),
        "layer": pack_ints(layer), "pos": pack_ints(pos), "feature": pack_ints(feat),
        "activation": pack_floats(act), "value": pack_floats(graph.values[kept].numpy()),
        "influence": pack_floats(graph.influence()[kept].numpy()),
        "src": pack_ints(src.numpy()), "dst": pack_ints(dst.numpy()), "weight": pack_floats(w.numpy()),
        "n_edges": n_edges, "n_features_total": graph.n_features, "node_threshold": node_threshold,
        "edge_threshold": edge_threshold,
    }
    n_feat = kinds.count("feature")
    default = (f"attribution graph: {n_feat} of {graph.n_features} features, {kinds.count('error')} error nodes, "
               f"{graph.n_pos} inputs, {graph.n_logits} logits")
    return View("graph", data, title or default, height=900)
