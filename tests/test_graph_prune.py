"""Influence and pruning of attribution graphs: the power series equals the matrix inverse, pruning keeps inputs,
logits and the most influential nodes, and every kept edge joins kept nodes."""

from __future__ import annotations

import pytest
import torch

from hooked_vlm.analysis.graph.graph import influence, normalize_rows, partial_influences
from tests.test_attribution_graph import graph_of


def test_influence_is_the_neumann_series_of_the_normalised_adjacency():
    _, _, _, g = graph_of("llava", "plt")
    w = g.logit_weights()
    a = normalize_rows(g.adjacency).double()
    eye = torch.eye(a.shape[0], dtype=torch.float64)
    want = w.double() @ (torch.linalg.inv(eye - a) - eye)  # w (A + A^2 + ...)
    got = g.influence()
    assert (got.double() - want).abs().max() <= 1e-5 * float(want.abs().max())
    assert float(got[g.logit_offset:].abs().max()) == 0.0  # nothing reads the logits
    assert float(got[g.input_offset: g.logit_offset].sum()) > 0


def test_prune_keeps_inputs_logits_and_the_influential_nodes():
    _, _, _, g = graph_of("llava", "plt")
    node_mask, edge_mask, cumulative = g.prune(node_threshold=0.6, edge_threshold=0.9)
    assert node_mask[g.input_offset:].all()
    n_inner = g.input_offset
    assert 0 < int(node_mask[:n_inner].sum()) < n_inner  # something kept, something dropped
    infl = g.influence()
    kept = infl[:n_inner][node_mask[:n_inner]]
    assert float(kept.min()) >= float(infl[:n_inner].median())  # 60% of the influence sits in the top of the tail
    rows, cols = edge_mask.nonzero(as_tuple=True)
    assert node_mask[rows].all() and node_mask[cols].all()
    assert bool((g.adjacency[rows, cols] != 0).all())
    # kept features and errors feed something, kept features are fed by something
    assert edge_mask[:, :n_inner][:, node_mask[:n_inner]].any(0).all()
    assert edge_mask[: g.n_features][node_mask[: g.n_features]].any(1).all()
    assert abs(float(cumulative.max()) - 1.0) <= 1e-5
    everything = g.prune(1.0, 1.0).node_mask
    assert int(everything.sum()) >= int(node_mask.sum())
    with pytest.raises(ValueError, match="node_threshold"):
        g.prune(1.5)


def test_inputs_on_the_image_grid():
    _, _, _, g = graph_of("gemma3", "clt_skip")
    table = g.node_table()
    patches = table[(table.kind == "input") & (table.image == 0)]
    grid = g.input_grid()
    assert grid.shape == (4, 4) and not bool(torch.isnan(grid).any())
    for row in patches.itertuples():
        assert abs(float(grid[row.row, row.col]) - row.influence) <= 1e-6
    node = int(torch.argmax(g.influence()[: g.n_features]))
    direct = g.input_grid(node)
    for row in patches.itertuples():
        assert float(direct[row.row, row.col]) == float(g.adjacency[node, row.node])
    image = torch.tensor(patches.position.tolist())
    share = g.input_share(image)
    assert 0.0 < share < 1.0
    assert abs(share + g.input_share(torch.tensor([p for p in range(g.n_pos) if p not in set(image.tolist())])) - 1) <= 1e-6


def _dense_partial_influences(rows, logit_weights, order):
    """The ranking written out on the stacked rows: w pushed through the normalised rows, a visited feature's share
    passed on through its own row, until nothing moves."""
    a = normalize_rows(rows).double()
    n_logits = len(logit_weights)
    prod = torch.zeros(rows.shape[0], dtype=torch.float64)
    prod[:n_logits] = logit_weights.double()
    total = torch.zeros(rows.shape[1], dtype=torch.float64)
    while bool(prod.any()):
        col = prod @ a
        total += col
        prod = torch.zeros_like(prod)
        for i, feature in enumerate(order):
            prod[n_logits + i] = col[feature]
    return total


@pytest.mark.parametrize("chunk_rows", [1, 3, 64])
def test_partial_influences_read_in_chunks_equal_the_dense_ranking(chunk_rows):
    g = torch.Generator().manual_seed(0)
    n_feat, n_other, order = 12, 9, [5, 0, 7, 3, 11]
    # a DAG: feature order[i]'s row reads only features visited after it (and errors / inputs)
    feat_rows = torch.zeros(len(order), n_feat + n_other)
    for i, f in enumerate(order):
        later = order[i + 1:]
        feat_rows[i, later] = torch.randn(len(later), generator=g)
        feat_rows[i, n_feat:] = torch.randn(n_other, generator=g)
    logit_rows = torch.randn(2, n_feat + n_other, generator=g)
    weights = torch.tensor([0.7, 0.3])
    got = partial_influences([logit_rows, feat_rows], weights, order, chunk_rows=chunk_rows)
    want = _dense_partial_influences(torch.cat([logit_rows, feat_rows]), weights, order)
    assert (got.double() - want).abs().max() <= 1e-6 * float(want.abs().max())
