"""Attribution graphs: the frozen replacement is exact, every edge row sums to its target, and the graph predicts
interventions in the frozen replacement exactly. Tiny random models, fp32: LLaVA (Llama LM), Gemma 3 (sandwich norms,
(1 + w) norm weights, GQA, sliding windows) and PaliGemma 2 (Gemma 2 LM: attention and final soft-caps, o_proj bias,
prefix-LM mask); random transcoders (tests/tiny_transcoders.py)."""

from __future__ import annotations

import functools

import pytest
import torch

from hooked_vlm.analysis.graph import (Intervention, TranscoderSet, attribution_graph, clean_run, feature_intervention,
                                       predicted_logit_change, replacement_forward, replacement_logits)
from tests import tiny, tiny_gemma3, tiny_paligemma
from tests import tiny_transcoders as tt

VARIANTS = {"plt": dict(), "skip_jumprelu": dict(skip=True, jumprelu=True), "clt_skip": dict(cross_layer=True, skip=True)}


@functools.lru_cache(maxsize=None)
def llava_case():
    b = tiny.llava()
    return b.model, {k: v[:1] for k, v in b.unpadded.items()}


@functools.lru_cache(maxsize=None)
def gemma3_case():
    b = tiny_gemma3.gemma3()
    return b.model, {k: v[:1] for k, v in b.unpadded.items()}


@functools.lru_cache(maxsize=None)
def gemma2_case():
    """PaliGemma 2: soft-caps 2.0 (attention) and 3.0 (final, small enough to bend the logits), o_proj bias."""
    from hooked_vlm import HookedVLM

    folder, hf = tiny_paligemma.make_paligemma(text=tiny_paligemma.gemma2_text_config(attention_bias=True),
                                               processor=False)
    return HookedVLM.from_pretrained(str(folder)), tiny_paligemma.paligemma_batch(hf, [6], [3], [0])


CASES = {"llava": llava_case, "gemma3": gemma3_case, "gemma2": gemma2_case}
#: (case, variant) pairs whose graphs are built (once each: graph_of caches them)
GRAPHS = [("llava", "plt"), ("llava", "skip_jumprelu"), ("llava", "clt_skip"), ("gemma3", "skip_jumprelu"),
          ("gemma3", "clt_skip"), ("gemma2", "plt"), ("gemma2", "clt_skip")]


@functools.lru_cache(maxsize=None)
def graph_of(case: str, variant: str):
    model, inputs = CASES[case]()
    ts = tt.random_set(model, d_sae=12, **VARIANTS[variant])
    return model, inputs, ts, attribution_graph(model, inputs, ts, batch_size=64)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_frozen_replacement_with_errors_reproduces_the_model(case, variant):
    model, inputs = CASES[case]()
    ts = tt.random_set(model, **VARIANTS[variant])
    with torch.no_grad():
        want = model(**inputs)[0]  # the default (fast attention) path
    got = replacement_logits(model, inputs, ts)
    assert (got - want).abs().max() <= 1e-5
    # without the error nodes the random transcoders explain little: the comparison above is not vacuous
    assert (replacement_logits(model, inputs, ts, errors=False) - want).abs().max() > 1e-2


@pytest.mark.parametrize("case, variant", GRAPHS)
def test_every_row_sums_to_its_target(case, variant):
    model, inputs, ts, g = graph_of(case, variant)
    assert g.n_features > 30 and g.n_features == g.n_active
    residual = g.adjacency.sum(1) + g.bias - g.values
    # feature rows: incoming edges + constant = the encoder pre-activation of the clean run
    assert residual[: g.n_features].abs().max() <= 1e-4
    # logit rows: incoming edges + constant = the logit before the soft-cap
    assert residual[g.logit_offset:].abs().max() <= 1e-4
    assert g.adjacency[g.error_offset: g.logit_offset].abs().max() == 0  # nothing feeds errors and inputs
    with torch.no_grad():
        logits = model(**inputs)[0, -1]
    ids = [i[0] for i in g.logit_targets.ids]
    cap = model.cfg.text.final_logit_softcap
    capped = g.logit_targets.values if cap is None else cap * torch.tanh(g.logit_targets.values / cap)
    assert (capped - logits[ids]).abs().max() <= 1e-5
    if cap is not None:
        assert float(g.logit_targets.values.abs().max()) > cap  # the cap bends these logits
    # an edge from a feature's own layer or later is impossible (layered); from a later position too, unless the
    # mask is bidirectional there (Gemma 3 within an image, PaliGemma's prefix-LM)
    f = g.features
    later = f[None, :, 0] >= f[:, None, 0]
    if model.cfg.text.mask_policy == "causal":
        later |= f[None, :, 1] > f[:, None, 1]
    assert g.adjacency[: g.n_features, : g.n_features][later].abs().max() == 0


@pytest.mark.parametrize("case", ["llava", "gemma3"])
def test_without_biases_the_constant_is_the_encoder_bias(case):
    """A model without biases and transcoders without b_dec: the constant of a feature row is exactly b_enc."""
    model, inputs = CASES[case]()
    ts = tt.random_set(model, d_sae=8, b_dec=False, skip=True)
    g = attribution_graph(model, inputs, ts, batch_size=64)
    b_enc = torch.stack([ts.b_enc[l][f] for l, _, f in g.features.tolist()])
    assert (g.feature_bias - b_enc).abs().max() <= 1e-6
    assert (g.adjacency[: g.n_features].sum(1) + b_enc - g.pre_activations).abs().max() <= 1e-4
    assert g.logit_bias.abs().max() <= 1e-6


@pytest.mark.parametrize("case, variant", [("llava", "plt"), ("gemma3", "clt_skip"), ("gemma2", "plt")])
def test_zeroing_a_feature_changes_what_the_graph_predicts(case, variant):
    model, inputs, ts, g = graph_of(case, variant)
    run = clean_run(model, inputs, ts)
    infl = g.influence()[: g.n_features]
    for node in torch.argsort(infl, descending=True)[:3].tolist():
        layer, pos, feat = g.features[node].tolist()
        acts = [a.clone() for a in run.acts]
        acts[layer][pos, feat] = 0.0
        with torch.no_grad():
            _, state = replacement_forward(model, run, ts, acts=acts)
            _, clean = replacement_forward(model, run, ts)
        # logits (before the cap) read at the query
        got = g.logit_targets.directions @ (state.final[0, g.position] - clean.final[0, g.position])
        assert (got + g.adjacency[g.logit_offset:, node]).abs().max() <= 1e-4
        assert got.abs().max() > 1e-4
        # the pre-activations of every feature downstream (other features frozen at their clean values)
        pre = torch.stack([state.reads[l][0, p] @ ts.W_enc[l][:, f] for l, p, f in g.features.tolist()])
        pre0 = torch.stack([clean.reads[l][0, p] @ ts.W_enc[l][:, f] for l, p, f in g.features.tolist()])
        assert ((pre - pre0) + g.adjacency[: g.n_features, node]).abs().max() <= 1e-4


def test_max_feature_nodes_keeps_the_most_influential_rows_unchanged():
    model, inputs, ts, full = graph_of("llava", "plt")
    small = attribution_graph(model, inputs, ts, max_feature_nodes=40, batch_size=16)
    assert small.n_features == 40 and small.n_active == full.n_active
    idx = [full.feature_node(*f) for f in small.features.tolist()]
    cols = idx + list(range(full.error_offset, full.adjacency.shape[0]))
    rows = idx + list(range(full.logit_offset, full.adjacency.shape[0]))
    assert (small.adjacency[: 40] - full.adjacency[idx][:, cols]).abs().max() <= 1e-6
    assert (small.adjacency[small.logit_offset:] - full.adjacency[full.logit_offset:][:, cols]).abs().max() <= 1e-6
    assert rows  # kept features are among the most influential: their total influence beats a random pick
    infl = full.influence()[: full.n_features]
    assert infl[idx].sum() > infl.sort(descending=True).values[-40:].sum()


def test_targets_and_node_table():
    model, inputs, ts, _ = graph_of("llava", "plt")
    g = attribution_graph(model, inputs, ts, target=(5, 7), max_feature_nodes=5, batch_size=16)
    with torch.no_grad():
        logits = model(**inputs)[0, -1]
    assert g.n_logits == 1 and abs(float(g.logit_targets.values[0]) - float(logits[5] - logits[7])) <= 1e-5
    table = g.node_table()
    assert list(table.kind.value_counts().sort_index().items()) == sorted(
        {"feature": g.n_features, "error": g.n_layers * g.n_pos, "input": g.n_pos, "logit": 1}.items())
    patches = table[(table.kind == "input") & (table.image == 0)]
    assert len(patches) == 16 and set(zip(patches.row, patches.col)) == {(r, c) for r in range(4) for c in range(4)}
    assert patches.token.str.startswith("<img").all()
    g1 = attribution_graph(model, inputs, ts, target="red", max_feature_nodes=5, batch_size=16)
    assert g1.logit_targets.labels == ["red"]


def test_bad_input():
    model, inputs = llava_case()
    ts = tt.random_set(model)
    b = tiny.llava()
    with pytest.raises(ValueError, match="one prompt"):
        attribution_graph(model, b.unpadded, ts)
    with pytest.raises(ValueError, match="padding"):
        attribution_graph(model, {k: v[:1] for k, v in b.inputs.items()}, ts)
    short = TranscoderSet(ts.W_enc[:2], ts.b_enc[:2], {(0, 0): ts.W_dec[(0, 0)], (1, 1): ts.W_dec[(1, 1)]},
                          ts.b_dec[:2], ts.input_hooks[:2], ts.output_hooks[:2])
    with pytest.raises(ValueError, match="one transcoder per layer"):
        attribution_graph(model, inputs, short)
    with pytest.raises(ValueError, match="another layer"):
        TranscoderSet(ts.W_enc[:1], ts.b_enc[:1], {(0, 0): ts.W_dec[(0, 0)]}, ts.b_dec[:1], ts.input_hooks[1:2],
                      ts.output_hooks[:1])
    with pytest.raises(TypeError, match="TranscoderSet"):
        attribution_graph(model, inputs, "nope")


# ---------------------------------------------------------------- interventions
@pytest.mark.parametrize("variant", ["plt", "clt_skip"])
def test_frozen_interventions_match_the_graph(variant):
    model, inputs, ts, g = graph_of("gemma2", variant)
    nodes = torch.argsort(g.influence()[: g.n_features], descending=True)[:2].tolist()
    edits = [Intervention(*g.features[nodes[0]].tolist(), scale=3.0),
             Intervention(*g.features[nodes[1]].tolist(), value=0.0)]
    logits, acts = feature_intervention(model, inputs, ts, edits, mode="frozen")
    with torch.no_grad():
        base = model(**inputs)[0, g.position]
    cap = model.cfg.text.final_logit_softcap
    ids = [i[0] for i in g.logit_targets.ids]
    # the graph's prediction by hand: edges are linear in the source's activation (x3: twice the edge; -> 0: minus it)
    by_hand = 2.0 * g.adjacency[g.logit_offset:, nodes[0]] - g.adjacency[g.logit_offset:, nodes[1]]
    assert (predicted_logit_change(g, edits) - by_hand).abs().max() <= 1e-6
    pre_new = g.logit_targets.values + by_hand
    assert (cap * torch.tanh(pre_new / cap) - logits[g.position, ids]).abs().max() <= 1e-4
    assert (logits[g.position, ids] - base[ids]).abs().max() > 1e-3
    assert float(acts[edits[1].layer][edits[1].position, edits[1].feature]) == 0.0


def test_free_interventions_match_the_sae_splice():
    """Free mode = the real model with the transcoder spliced (error term on) and its feature edited there."""
    model, inputs = llava_case()
    ts = tt.random_set(model, skip=True)
    run = clean_run(model, inputs, ts)
    pos, feat = map(int, torch.nonzero(run.acts[1])[-1])
    a = float(run.acts[1][pos, feat])
    logits, _ = feature_intervention(model, inputs, ts, [Intervention(1, pos, feat, scale=-2.0)], mode="free")
    same, _ = feature_intervention(model, inputs, ts, [Intervention(1, pos, feat, scale=1.0)], mode="free")
    with torch.no_grad():
        want_same = model(**inputs)[0]
    assert (same - want_same).abs().max() <= 1e-5

    def edit(acts, hook):
        acts = acts.clone()
        acts[0, pos, feat] = -2.0 * a
        return acts

    tc = tt.TinyTranscoder(ts, 1)
    with torch.no_grad(), model.saes([tc], use_error_term=True):
        want = model.run_with_hooks(**inputs, fwd_hooks=[("blocks.1.hook_mlp_out.hook_sae_acts_post", edit)])[0]
    assert (logits - want).abs().max() <= 1e-5 and (logits - want_same).abs().max() > 1e-3
    with pytest.raises(ValueError, match="exactly one"):
        Intervention(0, 0, 0)
    with pytest.raises(ValueError, match="outside the graph"):
        feature_intervention(model, inputs, ts, [(0, 0, 10_000, 1.0)])
