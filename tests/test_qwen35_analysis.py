"""Analyses on a hybrid model (tiny Qwen3.5: layers 0, 2, 3 Gated DeltaNet, layer 1 gated attention;
docs/hybrid_models.md). The residual-stream analyses work unchanged; the attention ones act on attention layers only
and say so, raise naming the kind when a linear layer is named, and knockout's ``linear="remove_source"`` is exact:
tested against a hand computation of the layer and as "the source reaches no other position"."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hooked_vlm.analysis import (activation_patching, attention_flow_frame, attention_knockout, attribution_patching,
                                 gate_frame, knockout_hooks, last_logit_diff_metric, logit_lens, patch_attribution,
                                 patching_sweep, site_hook_names, span_ablation, steer)
from tests import tiny_qwen35 as tq
from tests.test_qwen35 import hand_delta_rule
from tests.tiny_sae import TinySAE

HAND_ATOL = 1e-5
LINEAR = {0: "linear_attention", 2: "linear_attention", 3: "linear_attention"}


def built():
    """(model, the padded batch, a second batch of the same layout: other tokens and pixels)."""
    b = tq.qwen35()
    return b.model, b.inputs, tq.batch(seed=7)


def test_residual_stream_analyses_work_unchanged():
    model, inputs, other = built()
    base = model(**inputs)
    lens = logit_lens(model, inputs, span="image")
    assert len(lens.layers) == model.cfg.n_layers + 1
    assert (span_ablation(model, inputs, "image", how="zero") - base).abs().max() > 1e-3
    for l in (0, 1):  # a linear and an attention layer: every kind's output is patchable and steerable
        patched = activation_patching(model, inputs, other, span="eoi", site="attn_out", layers=l)
        assert (patched - base).abs().max() > 0.0, l
        steered = steer(model, inputs, torch.ones(model.cfg.d_model), span="eoi", site="attn_out", layers=l)
        assert (steered - base).abs().max() > 1e-4, l
    sweep = patching_sweep(model, inputs, other, (5, 6), span="eoi", site="resid_pre")
    assert sorted(set(sweep["layer"])) == list(range(model.cfg.n_layers))
    result = attribution_patching(model, inputs, other, last_logit_diff_metric(model, inputs, (5, 6)))
    assert set(result.layers["attn_out"]) == set(range(model.cfg.n_layers))
    with torch.no_grad():
        plain = model(**inputs)
        exact = model.run_with_saes(inputs, saes=[TinySAE(model.cfg.d_model, "blocks.0.hook_attn_out")])
        lossy = model.run_with_saes(inputs, saes=[TinySAE(model.cfg.d_model, "blocks.0.hook_attn_out", lossy=True)])
    assert (exact - plain).abs().max() <= 1e-4 < (lossy - plain).abs().max()


def test_knockout_acts_on_attention_layers_and_says_so():
    model, inputs, _ = built()
    hooks = knockout_hooks(model, "image", "text")
    assert [name for name, _ in hooks] == ["blocks.1.attn.hook_mask"]
    assert hooks.acted_on == {1: "attention mask"} and hooks.skipped == LINEAR
    logits = attention_knockout(model, inputs, "image", "text")
    assert logits.knockout_skipped == LINEAR
    with torch.no_grad():
        only_layer_1 = model.run_with_hooks(**inputs, fwd_hooks=list(knockout_hooks(model, "image", "text", layers=[1])))
    assert torch.equal(logits, only_layer_1)
    with pytest.raises(ValueError, match="layer 0 is a 'linear_attention' layer.*linear='remove_source'"):
        knockout_hooks(model, "image", "text", layers=[0, 1])
    with pytest.raises(ValueError, match="heads=.*no per-head edges"):
        knockout_hooks(model, "image", "text", heads=[0], linear="remove_source")
    both = knockout_hooks(model, "image", "text", mode="zero", linear="remove_source")
    assert both.acted_on == {0: "source removal", 1: "attention zero", 2: "source removal", 3: "source removal"}


def _hand_layer_z(block, x: torch.Tensor) -> torch.Tensor:
    """Gated DeltaNet's delta-rule output (hook_z) computed by hand from its mixer input x [batch, pos, d_model]."""
    la = block.linear_attn.la
    m = block.linear_attn
    qkv = F.pad(m.in_proj_qkv(x).transpose(1, 2), (la.conv_kernel - 1, 0))
    qkv = F.silu(F.conv1d(qkv, m.conv1d.weight, groups=la.conv_dim)).transpose(1, 2)
    b, n, _ = x.shape
    q, k, v = qkv.split([m.key_dim, m.key_dim, m.value_dim], -1)
    beta = m.in_proj_b(x).sigmoid()
    g = -m.A_log.exp() * F.softplus(m.in_proj_a(x) + m.dt_bias)
    z, _ = hand_delta_rule(q.reshape(b, n, la.n_key_heads, -1), k.reshape(b, n, la.n_key_heads, -1),
                           v.reshape(b, n, la.n_value_heads, -1), g, beta)
    return z


def test_source_removal_on_a_linear_layer_equals_the_hand_computation():
    """linear='remove_source' at layer 0 for the vision-start markers: the layer's delta-rule output equals the hand
    computation with those positions' input (and the padding's) set to zero, and positions before the first source
    are unchanged."""
    model, inputs, _ = built()
    seen = {}
    grab = lambda t, hook: seen.__setitem__(hook.name, t.detach().clone())  # noqa: E731
    with torch.no_grad():
        model.run_with_hooks(**inputs, fwd_hooks=[("blocks.0.ln1.hook_normalized", grab)])
        clean_x = seen["blocks.0.ln1.hook_normalized"]
        hooks = knockout_hooks(model, "boi", "text", layers=[0], linear="remove_source")
        model.run_with_hooks(**inputs, fwd_hooks=list(hooks) + [("blocks.0.linear_attn.hook_z", grab)])
        src = model.run_state.spans.mask("boi") | ~inputs["attention_mask"].bool()
        want = _hand_layer_z(model.blocks[0], clean_x.masked_fill(src[..., None], 0.0))
    assert hooks.acted_on == {0: "source removal"}
    assert (seen["blocks.0.linear_attn.hook_z"] - want).abs().max().item() <= HAND_ATOL


def test_knocking_a_source_out_everywhere_makes_every_other_position_blind_to_it():
    """Attention mask knockout (src -> all) on attention layers + source removal on linear layers: changing the
    source position's embedding changes no other position's logits (exactly), while without the knockout it does."""
    model, inputs, _ = built()
    src = 10
    poke = [("hook_embed", lambda t, hook: t.index_add(1, torch.tensor([src]), torch.ones_like(t[:, :1]) * 3.0))]
    hooks = list(knockout_hooks(model, [src], "all", linear="remove_source"))
    with torch.no_grad():
        knocked = model.run_with_hooks(**inputs, fwd_hooks=hooks)
        knocked_poked = model.run_with_hooks(**inputs, fwd_hooks=hooks + poke)
        clean, poked = model(**inputs), model.run_with_hooks(**inputs, fwd_hooks=poke)
    others = [p for p in range(inputs["input_ids"].shape[1]) if p != src]
    assert (knocked_poked[:, others] - knocked[:, others]).abs().max().item() <= 1e-6
    assert (poked[:, src + 1:] - clean[:, src + 1:]).abs().max().item() > 1e-3


def test_attention_flow_and_gate_use_attention_layers_and_refuse_linear_ones():
    model, inputs, _ = built()
    frame = attention_flow_frame(model, inputs)
    assert set(frame["layer"]) == {1} and frame.attrs["skipped_layers"] == LINEAR
    with pytest.raises(ValueError, match="layer 2 is a 'linear_attention' layer"):
        attention_flow_frame(model, inputs, layers=[1, 2])
    gate = gate_frame(model, inputs, offsets=[0, 1])
    assert gate.attrs["skipped_layers"] == LINEAR and gate["knockout_kl"].notna().any()
    with pytest.raises(ValueError, match="layer 0 is a 'linear_attention' layer"):
        gate_frame(model, inputs, knockout_layers=[0], offsets=[0])


def test_patch_attribution_splits_the_gated_attention_layer_exactly_and_lists_the_others():
    model, inputs, _ = built()
    result = patch_attribution(model, inputs, target=5)
    assert result.undecomposed == LINEAR
    total = result.attribution[:, 1].sum((-1, -2)) + result.bias[:, 1]
    assert (total - result.attn_total[:, 1]).abs().max().item() <= 1e-5  # the gate is in every source's term
    assert result.attribution[:, [0, 2, 3]].abs().max().item() == 0.0
    assert (result.embed_total + result.attn_total.sum(1) + result.mlp_total.sum(1) - result.logit).abs().max() <= 1e-4
    with pytest.raises(ValueError, match="layer 0 is a 'linear_attention' layer"):
        patch_attribution(model, inputs, target=5, layers=[0])


def test_a_site_that_only_some_layer_kinds_have():
    model, _, _ = built()
    assert site_hook_names(model, "z") == ["blocks.1.attn.hook_z"]
    assert site_hook_names(model, "blocks.{l}.linear_attn.hook_state") == [
        f"blocks.{l}.linear_attn.hook_state" for l in (0, 2, 3)]
    with pytest.raises(ValueError, match=r"blocks.0.attn.hook_z \('linear_attention' layer\)"):
        site_hook_names(model, "z", layers=[0])
