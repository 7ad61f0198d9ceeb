"""An :class:`~.graph.AttributionGraph` as circuit-tracer's frontend graph file (``create_graph_files.py``,
``frontend/graph_models.py``), so its local viewer and Neuronpedia-style viewers open it.

Node ids follow circuit-tracer: feature ``{layer}_{feature}_{pos}``, error ``0_{layer}_{pos}``, input
``E_{token id}_{pos}``, logit ``{n_layers + 1}_{token id}_{pos}``; a logit difference gets the virtual id
``d_vocab + i`` as circuit-tracer does for custom targets. circuit-tracer's error id can equal a layer-0 feature's
(``0_{l}_{p}`` is also feature ``l`` of layer 0 at ``p``); where it does, the error's id gets the suffix ``_error``. Image positions are ``embedding`` nodes; their
``clerp`` reads ``<img r,c>`` and the extra field ``image_cell`` holds [image, row, col].
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def graph_to_json(graph: Any, path: str | Path, slug: str, node_threshold: float, edge_threshold: float,
                  prompt: str | None) -> dict:
    node_mask, edge_mask, cumulative = graph.prune(node_threshold, edge_threshold)
    grid = graph.spans.grid[0].cpu().tolist() if graph.spans is not None else [[-1] * 4] * graph.n_pos
    ids = graph.input_ids.tolist()
    n_vocab_virtual = 1 + max(max(t) for t in graph.logit_targets.ids)
    nodes: dict[int, dict] = {}
    for i in node_mask.nonzero()[:, 0].tolist():
        kind = graph.kind(i)
        infl = float(cumulative[i])
        if kind == "feature":
            layer, pos, feat = graph.features[i].tolist()
            node = dict(node_id=f"{layer}_{feat}_{pos}", feature=_cantor(layer, feat), layer=str(layer), ctx_idx=pos,
                        feature_type="cross layer transcoder", jsNodeId=f"{layer}_{feat}-0", influence=infl,
                        activation=float(graph.activations[i]))
        elif kind == "error":
            layer, pos = divmod(i - graph.error_offset, graph.n_pos)
            node = dict(node_id=f"0_{layer}_{pos}", feature=-1, layer=str(layer), ctx_idx=pos,
                        feature_type="mlp reconstruction error", jsNodeId=f"{layer}_{pos}-0", influence=infl)
        elif kind == "input":
            pos = i - graph.input_offset
            node = dict(node_id=f"E_{ids[pos]}_{pos}", feature=pos, layer="E", ctx_idx=pos, feature_type="embedding",
                        jsNodeId=f"E_{ids[pos]}-{pos}", influence=infl)
            img, _, r, c = grid[pos]
            if img >= 0:
                node.update(clerp=graph.str_tokens[pos], image_cell=[img, r, c])
        else:
            k = i - graph.logit_offset
            t_ids = graph.logit_targets.ids[k]
            vocab = t_ids[0] if len(t_ids) == 1 else n_vocab_virtual + k
            layer = str(graph.n_layers + 1)
            prob = float(graph.logit_targets.weights[k])
            node = dict(node_id=f"{layer}_{vocab}_{graph.position}", feature=vocab, layer=layer,
                        ctx_idx=graph.position, feature_type="logit", token_prob=prob, is_target_logit=k == 0,
                        jsNodeId=f"L_{vocab}-{graph.position}",
                        clerp=f'Output "{graph.logit_targets.labels[k]}" (p={prob:.3f})')
        node.setdefault("clerp", "")
        node.update(run_idx=0, reverse_ctx_idx=0)
        node.setdefault("token_prob", 0.0)
        node.setdefault("is_target_logit", False)
        nodes[i] = node
    features = {n["node_id"] for n in nodes.values() if n["feature_type"] == "cross layer transcoder"}
    for n in nodes.values():
        if n["feature_type"] == "mlp reconstruction error" and n["node_id"] in features:
            n["node_id"] += "_error"
    dst, src = edge_mask.nonzero(as_tuple=True)
    links = [dict(source=nodes[s]["node_id"], target=nodes[d]["node_id"], weight=float(graph.adjacency[d, s]))
             for d, s in zip(dst.tolist(), src.tolist()) if s in nodes and d in nodes]
    used = {x for link in links for x in (link["source"], link["target"])}
    kept = [n for n in nodes.values() if n["node_id"] in used or n["feature_type"] in ("embedding", "logit")]
    out = dict(
        metadata=dict(slug=slug, scan=graph.scan, transcoder_list=[], prompt_tokens=list(graph.str_tokens),
                      prompt=prompt if prompt is not None else " ".join(graph.str_tokens),
                      node_threshold=node_threshold, schema_version=1),
        qParams=dict(pinnedIds=[], supernodes=[], linkType="both", clickedId="", sg_pos=""),
        nodes=kept, links=links)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    return out
