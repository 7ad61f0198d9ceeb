"""``AttributionGraph``: nodes, the dense adjacency, influence, pruning and the node table.

Node order (circuit-tracer's): ``[features (layer, position, feature) | errors (layer-major, then position) |
inputs (positions) | logits]``. ``adjacency[target, source]`` is the direct effect of ``source`` on ``target`` in the
frozen replacement model (see :mod:`.attribute`); rows of inputs and errors are zero (nothing feeds them).
For every feature row, ``adjacency[row].sum() + feature_bias == pre_activation``; for every logit row,
``adjacency[row].sum() + logit_bias == logit value`` (before any final soft-cap).

Influence (circuit-tracer's ``graph.py``): with ``A`` the adjacency with absolute values, each row normalised to
sum 1, and ``w`` the logit weights (probabilities), a node's influence is ``w (A + A^2 + ...)``: its share of the
logits through every path. :meth:`AttributionGraph.prune` keeps the nodes (then edges) holding a chosen fraction
of the total influence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

import torch
from torch import Tensor

KINDS = ("feature", "error", "input", "logit")


@dataclass
class LogitTargets:
    """The logit nodes: token ids (one, or two for a difference), labels, read directions [n, d_model] against
    ``ln_final``'s output, weights (probabilities, used by influence) and values (pre-cap logits)."""

    ids: list[list[int]]
    labels: list[str]
    directions: Tensor
    weights: Tensor
    values: Tensor

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: Any) -> "LogitTargets":
        return LogitTargets(self.ids, self.labels, self.directions.to(device), self.weights.to(device),
                            self.values.to(device))


def normalize_rows(matrix: Tensor) -> Tensor:
    a = matrix.abs()
    return a / a.sum(dim=1, keepdim=True).clamp(min=1e-10)


def influence(adjacency: Tensor, weights: Tensor, max_iter: int = 1000) -> Tensor:
    """``weights @ (A + A^2 + ...)`` for the row-normalised absolute adjacency (a DAG: the series ends)."""
    a = normalize_rows(adjacency)
    current = weights @ a
    total = current.clone()
    for _ in range(max_iter):
        if not bool(current.any()):
            return total
        current = current @ a
        total += current
    raise RuntimeError(f"influence did not converge in {max_iter} steps: the adjacency has a cycle")


def partial_influences(blocks: Sequence[Tensor], logit_weights: Tensor, feature_order: Sequence[int],
                       chunk_rows: int = 64) -> Tensor:
    """Influence on the logits of every source column, from the rows computed so far: circuit-tracer's greedy ranking
    of the features still to visit. ``blocks`` are those rows, read as one matrix stacked along dim 0 (logit rows
    first, then the feature rows of ``feature_order``) but never copied into one: each pass reads them ``chunk_rows``
    at a time, so memory stays one chunk above the rows themselves (the rows of a big prompt are gigabytes)."""
    pieces = [b[i:i + chunk_rows] for b in blocks for i in range(0, b.shape[0], chunk_rows)]  # views
    n_rows, n_cols = sum(p.shape[0] for p in pieces), pieces[0].shape[1]
    device, dtype = pieces[0].device, pieces[0].dtype
    # prod @ normalize_rows(rows) = (prod / |row| sums) @ |rows|
    inv_sums = torch.cat([p.abs().sum(1).clamp(min=1e-10).reciprocal() for p in pieces])
    n_logits = len(logit_weights)
    row_of_col = torch.full((n_cols,), -1, dtype=torch.long, device=device)
    row_of_col[torch.as_tensor(list(feature_order), dtype=torch.long, device=device)] = torch.arange(
        n_logits, n_logits + len(feature_order), device=device)
    has = torch.nonzero(row_of_col >= 0)[:, 0]
    prod = torch.zeros(n_rows, dtype=dtype, device=device)
    prod[:n_logits] = logit_weights.to(dtype)
    total = torch.zeros(n_cols, dtype=dtype, device=device)
    for _ in range(n_rows + 1):
        scaled, col, start = prod * inv_sums, torch.zeros(n_cols, dtype=dtype, device=device), 0
        for piece in pieces:  # col = influence reaching each source column
            part = scaled[start: start + piece.shape[0]]
            if bool(part.any()):
                col += part @ piece.abs()
            start += piece.shape[0]
        total += col
        prod = torch.zeros_like(prod)
        prod[row_of_col[has]] = col[has]  # a visited feature passes its influence on through its own row
        if not bool(prod.any()):
            return total
    raise RuntimeError("partial influences did not converge")


class PruneResult(NamedTuple):
    node_mask: Tensor  # [n_nodes] bool
    edge_mask: Tensor  # [n_nodes, n_nodes] bool
    cumulative: Tensor  # [n_nodes] share of total influence held by nodes at least as influential


def _threshold(scores: Tensor, keep: float) -> Tensor:
    s = torch.sort(scores, descending=True).values
    cum = torch.cumsum(s, 0) / s.sum().clamp(min=1e-30)
    return s[min(int(torch.searchsorted(cum, torch.tensor(keep, dtype=cum.dtype))), len(s) - 1)]


@dataclass
class AttributionGraph:
    """One prompt's attribution graph; see the module docstring for the node order and the identities."""

    adjacency: Tensor  # [n_nodes, n_nodes] direct effects, adjacency[target, source]
    features: Tensor  # [n_features, 3] (layer, position, feature id) of the feature nodes
    activations: Tensor  # [n_features]
    pre_activations: Tensor  # [n_features] encoder pre-activations (what feature rows explain)
    feature_bias: Tensor  # [n_features] constant part of each pre-activation
    logit_targets: LogitTargets
    logit_bias: Tensor  # [n_logits] constant part of each logit value
    n_layers: int
    n_pos: int
    position: int  # the query position the logits are read at
    input_ids: Tensor  # [n_pos]
    spans: Any  # TokenSpans of the prompt (batch of one): grid cells of image positions
    str_tokens: Sequence[str]
    scan: str = "hooked_vlm"
    n_active: int = 0  # active features before max_feature_nodes
    softcap: float | None = None  # the model's final-logit soft-cap; logit values are before it
    extra: dict = field(default_factory=dict)

    # ---------------------------------------------------------------- node index
    @property
    def n_features(self) -> int:
        return int(self.features.shape[0])

    @property
    def n_logits(self) -> int:
        return len(self.logit_targets)

    @property
    def error_offset(self) -> int:
        return self.n_features

    @property
    def input_offset(self) -> int:
        return self.n_features + self.n_layers * self.n_pos

    @property
    def logit_offset(self) -> int:
        return self.input_offset + self.n_pos

    def kind(self, node: int) -> str:
        bounds = (self.error_offset, self.input_offset, self.logit_offset, self.adjacency.shape[0])
        for k, b in zip(KINDS, bounds):
            if node < b:
                return k
        raise IndexError(f"node {node} is outside the graph's {self.adjacency.shape[0]} nodes")

    def feature_node(self, layer: int, position: int, feature: int) -> int:
        hit = torch.nonzero((self.features == torch.tensor([layer, position, feature])).all(1))[:, 0]
        if not len(hit):
            raise KeyError(f"feature {feature} of layer {layer} at position {position} is not a node (inactive, or "
                           "dropped by max_feature_nodes)")
        return int(hit[0])

    def error_node(self, layer: int, position: int) -> int:
        return self.error_offset + layer * self.n_pos + position

    def input_node(self, position: int) -> int:
        return self.input_offset + position

    def logit_node(self, i: int = 0) -> int:
        return self.logit_offset + i

    @property
    def values(self) -> Tensor:
        """[n_nodes] what each row explains: feature pre-activations, logit values; 0 for errors and inputs."""
        v = torch.zeros(self.adjacency.shape[0], dtype=self.adjacency.dtype)
        v[: self.n_features] = self.pre_activations
        v[self.logit_offset:] = self.logit_targets.values
        return v

    @property
    def bias(self) -> Tensor:
        """[n_nodes] constant terms: ``adjacency.sum(1) + bias == values`` on feature and logit rows."""
        v = torch.zeros(self.adjacency.shape[0], dtype=self.adjacency.dtype)
        v[: self.n_features] = self.feature_bias
        v[self.logit_offset:] = self.logit_bias
        return v

    # ---------------------------------------------------------------- influence and pruning
    def logit_weights(self) -> Tensor:
        w = torch.zeros(self.adjacency.shape[0], dtype=self.adjacency.dtype)
        w[self.logit_offset:] = self.logit_targets.weights.to(w.dtype)
        return w

    def influence(self) -> Tensor:
        """[n_nodes] each node's influence on the (probability-weighted) logits through all paths."""
        return influence(self.adjacency, self.logit_weights())

    def prune(self, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> PruneResult:
        """circuit-tracer's pruning: keep the nodes holding ``node_threshold`` of the influence (inputs and logits
        always), then the edges holding ``edge_threshold`` of the edge influence; drop features and errors left
        without outgoing edges (and features without incoming ones)."""
        for name, t in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
            if not 0.0 <= t <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {t}")
        w = self.logit_weights()
        node_infl = influence(self.adjacency, w)
        node_mask = node_infl >= _threshold(node_infl, node_threshold)
        node_mask[self.input_offset:] = True
        pruned = self.adjacency.clone()
        pruned[~node_mask] = 0
        pruned[:, ~node_mask] = 0
        a = normalize_rows(pruned)
        edge_scores = a * (influence(pruned, w) + w)[:, None]
        edge_mask = edge_scores >= _threshold(edge_scores.flatten(), edge_threshold)
        edge_mask &= edge_scores > 0
        inner = slice(0, self.input_offset)
        while True:
            old = node_mask.clone()
            edge_mask[~node_mask] = False
            edge_mask[:, ~node_mask] = False
            node_mask[inner] &= edge_mask[:, inner].any(0)
            node_mask[: self.n_features] &= edge_mask[: self.n_features].any(1)
            if bool((node_mask == old).all()):
                break
        s, idx = torch.sort(node_infl, descending=True)
        cum = torch.zeros_like(node_infl)
        cum[idx] = torch.cumsum(s, 0) / s.sum().clamp(min=1e-30)
        return PruneResult(node_mask, edge_mask, cum)

    # ---------------------------------------------------------------- the image's patches
    def input_grid(self, node: int | None = None, image: int = 0, tile: int = 0) -> Tensor:
        """One image's patches on their grid [rows, cols] (NaN where no patch): with ``node`` None, each patch's
        influence on the logits (:meth:`influence`); with a node index, the patch's direct edge into that node."""
        per_pos = (self.influence() if node is None else self.adjacency[node])[self.input_offset: self.logit_offset]
        return self.spans.to_grid(per_pos, image=image, batch=0, tile=tile)

    def input_share(self, positions: Tensor, node: int | None = None) -> float:
        """Share of the input nodes' total (influence, or absolute direct edges into ``node``) held by ``positions``
        (a bool mask or index tensor over the sequence)."""
        per_pos = self.influence() if node is None else self.adjacency[node].abs()
        per_pos = per_pos[self.input_offset: self.logit_offset]
        total = float(per_pos.sum())
        if total == 0.0:
            raise ValueError("the inputs have no influence on this node: a share of zero is undefined")
        return float(per_pos[positions].sum()) / total

    # ---------------------------------------------------------------- tables and files
    def node_table(self) -> Any:
        """A pandas DataFrame, one row per node: ``node`` (index into ``adjacency``), ``kind`` (feature / error /
        input / logit), ``layer`` (-1 for inputs, ``n_layers`` for logits), ``position``, ``feature`` (-1 unless a
        feature), ``token`` (the input's string token, ``<img r,c>`` for patches; the logit's label), ``image``,
        ``row``, ``col`` (the patch's grid cell; -1 off the image), ``activation`` (features), ``value`` (feature
        pre-activation, logit value before any soft-cap), ``bias`` (its constant term), ``influence``."""
        import pandas as pd

        infl = self.influence()
        grid = self.spans.grid[0].cpu() if self.spans is not None else torch.full((self.n_pos, 4), -1)
        rows = []
        for i in range(self.adjacency.shape[0]):
            kind = self.kind(i)
            layer, pos, feat, act, token = -1, -1, -1, float("nan"), ""
            if kind == "feature":
                layer, pos, feat = self.features[i].tolist()
                act = float(self.activations[i])
            elif kind == "error":
                layer, pos = divmod(i - self.error_offset, self.n_pos)
            elif kind == "input":
                pos = i - self.input_offset
                token = self.str_tokens[pos]
            else:
                layer, pos, token = self.n_layers, self.position, self.logit_targets.labels[i - self.logit_offset]
            img, _, r, c = grid[pos].tolist() if pos >= 0 else (-1, -1, -1, -1)
            rows.append(dict(node=i, kind=kind, layer=layer, position=pos, feature=feat, token=token, image=img,
                             row=r, col=c, activation=act, value=float(self.values[i]), bias=float(self.bias[i]),
                             influence=float(infl[i])))
        return pd.DataFrame(rows)

    def show(self, image: Any = None, **kwargs: Any) -> Any:
        """Interactive view (:func:`hooked_vlm.viz.graph_view`): the image's patches are input nodes drawn on
        ``image`` (the picture as the model saw it: ``hooked_vlm.viz.seen_image(model, inputs)``); click a node to
        light up what feeds it and what it drives. The last line of a notebook cell displays it. ``kwargs``:
        ``node_threshold``, ``edge_threshold``, ``image_index``, ``tile``, ``max_edges``, ``title``."""
        from ...viz.graph import graph_view  # viz imports analysis, never the other way at import time

        return graph_view(self, image, **kwargs)

    def save_html(self, path: Any, image: Any = None, **kwargs: Any) -> Any:
        """Write the interactive view (see :meth:`show`) as one self-contained HTML file; returns its path."""
        return self.show(image, **kwargs).save(path)

    def to_json(self, path: str, slug: str = "graph", node_threshold: float = 0.8, edge_threshold: float = 0.98,
                prompt: str | None = None) -> dict:
        """Write the pruned graph in circuit-tracer's frontend schema (``frontend/graph_models.py``: metadata,
        qParams, nodes, links) to ``path``; returns the dict. Image patches are ``embedding`` nodes whose
        ``clerp`` is ``<img r,c>`` (with ``image_cell`` = [image, row, col] as an extra field)."""
        from .graph_json import graph_to_json

        return graph_to_json(self, path, slug, node_threshold, edge_threshold, prompt)
