"""Analyses on a model with short-convolution layers (LFM2-VL, tests/tiny_lfm2vl.py: layers 0, 2, 3 conv; 1, 4
attention). The definitions are docs/hybrid_models.md's: the conv edge knockout removes the source's terms from every
destination's conv (checked here against a hand computation from cached b, h and the conv weight), with and without
the KV cache; knockouts skip conv layers by default and say so (``linear="skip"``), ``linear="edges"`` is that exact removal,
``linear="remove_source"`` (zero the sources' mixer input) equals it towards every later position; analyses that read
attention weights act on attention layers only and say which layers they skipped; a request for attention weights of
a conv layer raises naming the kind. Tolerance: fp32, 1e-5 on logits (one forward of a tiny model), 1e-5 of their
size on the conv outputs themselves.
"""

from __future__ import annotations

import pytest
import torch

from hooked_vlm.analysis._common import span_mask
from hooked_vlm.analysis.attention_flow import attention_flow, attention_flow_frame
from hooked_vlm.analysis.gate import gate_frame
from hooked_vlm.analysis.knockout import attention_knockout, knockout_hooks
from hooked_vlm.kv_cache import KVCache
from tests import tiny_lfm2vl as tl

ATOL = 1e-5
CONV, ATTN = [0, 2, 3], [1, 4]


def _model():
    b = tl.lfm2vl()
    return b.model, b.inputs


def test_knockout_hooks_say_what_they_do_on_each_layer():
    model, _ = _model()
    default = knockout_hooks(model, "image", "text")
    assert [n for n, _ in default] == ["blocks.1.attn.hook_mask", "blocks.4.attn.hook_mask"]
    assert default.skipped == {0: "conv", 2: "conv", 3: "conv"} and sorted(default.acted_on) == ATTN
    edges = knockout_hooks(model, "image", "text", linear="edges")
    assert sorted(n for n, _ in edges) == ["blocks.0.conv.hook_tap_mask", "blocks.1.attn.hook_mask",
                                           "blocks.2.conv.hook_tap_mask", "blocks.3.conv.hook_tap_mask",
                                           "blocks.4.attn.hook_mask"]
    assert edges.acted_on == {1: "attention mask", 4: "attention mask", 0: "conv edges", 2: "conv edges",
                              3: "conv edges"} and edges.skipped == {}
    assert [n for n, _ in knockout_hooks(model, "image", "text", layers=[2, 4], mode="zero", linear="edges")] == \
        ["blocks.4.attn.hook_pattern", "blocks.2.conv.hook_tap_mask"]
    with pytest.raises(ValueError, match="layer 0 is a 'conv' layer, with no attention edges"):
        knockout_hooks(model, "image", "text", layers=[0, 1])
    with pytest.raises(ValueError, match="heads=\\[1\\] with linear='edges'"):
        knockout_hooks(model, "image", "text", heads=[1], linear="edges")
    assert len(knockout_hooks(model, "image", "text", layers=ATTN, heads=[1])) == 2


def test_edges_are_refused_on_linear_attention_layers():
    from tests import tiny_qwen35 as tq35

    model = tq35.qwen35().model
    with pytest.raises(ValueError, match="linear='edges' removes src -> dst terms of short convolutions, but layer 0 "
                                         "is a 'linear_attention' layer"):
        knockout_hooks(model, "image", "text", linear="edges")


@torch.no_grad()
def test_source_removal_on_a_conv_layer_is_the_edge_knockout_to_every_later_position():
    """linear='remove_source' zeroes the src positions' mixer input (b = c = h = 0 there, no biases); at every other
    position the conv output is then exactly the edge knockout src -> all."""
    model, inputs = _model()
    name = "blocks.0.conv.hook_conv_out"
    outs = {}
    for linear, dst in (("remove_source", "all"), ("edges", "all")):
        with model.hooks(fwd_hooks=knockout_hooks(model, "image", dst, layers=[0], linear=linear)):
            _, cache = model.run_with_cache(**inputs, names_filter=name)
        outs[linear] = cache[name]
    _, clean = model.run_with_cache(**inputs, names_filter=name)
    others = ~span_mask(cache.spans, "image") & ~span_mask(cache.spans, "pad")
    scale = clean[name].abs().max().item()
    assert (outs["remove_source"] - outs["edges"])[others].abs().max().item() <= 1e-5 * scale
    assert (outs["edges"] - clean[name])[others].abs().max().item() > 1e-2 * scale


@torch.no_grad()
def test_conv_knockout_equals_the_hand_computation():
    """Knock out eoi -> text in conv layer 0 only: its conv output at each text position t loses
    w[:, kernel - 1 - (t - s)] * (b * h)[s] for the <|image_end|> position s within kernel - 1 before t; nothing else
    at layer 0 changes (later layers then change through the residual)."""
    model, inputs = _model()
    names = ("blocks.0.conv.hook_b", "blocks.0.conv.hook_x", "blocks.0.conv.hook_conv_out")
    _, clean = model.run_with_cache(**inputs, names_filter=lambda n: n in names)
    with model.hooks(fwd_hooks=knockout_hooks(model, "eoi", "text", layers=[0], linear="edges")):
        _, knocked = model.run_with_cache(**inputs, names_filter=lambda n: n in names)
    spans, kernel = clean.spans, model.blocks[0].conv.kernel
    weight = model.blocks[0].conv.conv.weight[:, 0]  # [d_model, kernel]
    bh = clean["blocks.0.conv.hook_b"] * clean["blocks.0.conv.hook_x"]
    expected = clean["blocks.0.conv.hook_conv_out"].clone()
    src, dst = span_mask(spans, "eoi"), span_mask(spans, "text")
    n_removed = 0
    for b in range(spans.batch):
        for t in dst[b].nonzero().flatten().tolist():
            for s in range(max(0, t - kernel + 1), t + 1):
                if src[b, s]:
                    expected[b, t] -= weight[:, kernel - 1 - (t - s)] * bh[b, s]
                    n_removed += 1
    assert n_removed == 8  # every image's end marker feeds the 2 text positions after it: 4 images
    got, scale = knocked["blocks.0.conv.hook_conv_out"], clean["blocks.0.conv.hook_conv_out"].abs().max().item()
    # relative to the conv outputs' size: float32 rounding of 3-term sums is ~1e-7 of it
    assert (got - expected).abs().max().item() <= 1e-5 * scale
    assert (got - clean["blocks.0.conv.hook_conv_out"]).abs().max().item() > 1e-2 * scale


@torch.no_grad()
def test_conv_knockout_is_the_same_with_the_kv_cache():
    """The last prompt position computed as a cached step (its conv reads the window in ConvState) gets the same
    knocked-out conv output (layer 0: the sources sit in the window, not in this step's inputs) and logits as in the
    full forward."""
    model, inputs = _model()
    n = inputs["input_ids"].shape[1]

    def at(spans, lo, hi):  # real positions lo <= p < hi of whatever sequence the spans describe
        cols = torch.arange(spans.seq_len, device=spans.grid.device)
        return span_mask(spans, "all") & ((cols >= lo) & (cols < hi))[None]

    # destination: position n - 1 (absent from the cached prompt run); sources: every position before it
    hooks = knockout_hooks(model, lambda spans: at(spans, 0, n - 1), lambda spans: at(spans, n - 1, n), layers=CONV,
                           linear="edges")
    conv0 = "blocks.0.conv.hook_conv_out"
    clean_logits, clean = model.run_with_cache(**inputs, names_filter=conv0)
    with model.hooks(fwd_hooks=hooks):
        full, knocked = model.run_with_cache(**inputs, names_filter=conv0)
        cache = KVCache(model.cfg)
        prompt = dict(inputs, input_ids=inputs["input_ids"][:, : n - 1], attention_mask=inputs["attention_mask"][:, : n - 1])
        model(**prompt, kv_cache=cache)
        spans = knocked.spans  # the whole sequence's spans, as generate passes them
        step, stepped = model.run_with_cache(inputs["input_ids"][:, n - 1:], attention_mask=inputs["attention_mask"],
                                             kv_cache=cache, spans=spans, names_filter=conv0)
    scale = clean[conv0].abs().max().item()  # tolerances relative to the conv outputs' size
    assert (stepped[conv0][:, 0] - knocked[conv0][:, -1]).abs().max().item() <= 1e-5 * scale
    assert (knocked[conv0][:, -1] - clean[conv0][:, -1]).abs().max().item() > 1e-2 * scale  # the window's terms removed
    assert (step[:, 0] - full[:, -1]).abs().max().item() <= 1e-4  # test_parity's tolerance
    assert (full[:, -1] - clean_logits[:, -1]).abs().max().item() > 100 * ATOL  # and the knockout shows in the logits


def test_attention_knockout_runs_on_every_layer_kind():
    model, inputs = _model()
    base = model(**inputs)
    conv_only = attention_knockout(model, inputs, "image", "text", layers=CONV, linear="edges")
    every = attention_knockout(model, inputs, "image", "text", linear="edges")
    assert every.knockout_acted_on[0] == "conv edges" and every.knockout_skipped == {}
    real = inputs["attention_mask"].bool()
    assert (conv_only - base)[real].abs().max().item() > 100 * ATOL
    assert (every - conv_only)[real].abs().max().item() > 100 * ATOL


def test_attention_flow_reads_attention_layers_and_says_which_it_skipped():
    model, inputs = _model()
    frame = attention_flow_frame(model, inputs)
    assert sorted(frame.layer.unique()) == ATTN and frame.attrs["skipped_layers"] == {0: "conv", 2: "conv", 3: "conv"}
    flow = attention_flow(model, inputs)
    assert sorted(flow.layer.unique()) == ATTN and flow.attrs["skipped_layers"] == {0: "conv", 2: "conv", 3: "conv"}
    with pytest.raises(ValueError, match="reads attention patterns, which do not exist in non-attention layers: layer 2 "
                                         "is a 'conv' layer"):
        attention_flow_frame(model, inputs, layers=[1, 2])


def test_gate_reads_and_knocks_out_attention_layers_and_lists_the_conv_ones():
    model, inputs = _model()
    frame = gate_frame(model, inputs, offsets=[0])
    assert frame.attrs["skipped_layers"] == {0: "conv", 2: "conv", 3: "conv"}
    assert frame.loc[frame.offset == 0, "knockout_kl"].notna().all()
    with pytest.raises(ValueError, match="layer 0 is a 'conv' layer"):
        gate_frame(model, inputs, layers=[0], offsets=[])


def test_residual_stream_analyses_run_unchanged():
    """Logit lens (its last readout is the model's prediction) and activation patching (every position of A's
    residual patched into a run on other pixels reproduces A) need nothing of the mixer kind."""
    from hooked_vlm.analysis import activation_patching, forward_with_hooks, logit_lens

    model, inputs = _model()
    logits = forward_with_hooks(model, inputs)
    lens = logit_lens(model, inputs, span="all", layers=[0, -1], top_k=1)
    assert torch.equal(lens.top_ids[-1, :, 0], logits[lens.batch_index, lens.positions].argmax(-1))
    other = dict(inputs, pixel_values=inputs["pixel_values"] + 0.5 * torch.randn_like(inputs["pixel_values"]))
    real = inputs["attention_mask"].bool()
    assert (forward_with_hooks(model, other) - logits)[real].abs().max().item() > 100 * ATOL
    out = activation_patching(model, other, inputs, span="all", layers=0)
    assert (out - logits)[real].abs().max().item() <= 1e-4
