"""TransformerLens's ActivationCache helper tests (tests/acceptance/test_activation_cache.py) re-asked of HookedVLM.

The toy LLaVA, two items (one image each). TL checks each helper against another helper or a hand computation;
so do we, and we add the identity TL's tests leave implicit: the pieces of a decomposition sum to the residual
stream they decompose. Exactness against TL itself on the same weights (fold_ln conventions) is the DLA work's.
Each test names the TL test(s) it mirrors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformer_lens.utilities.slice import Slice

# fp32, d_model=128, sums of <= ~1,000 terms (neurons expanded) of size <= ~20: measured <= 6e-6; the bound is 1e-4
SUM_TOL = 1e-4
# one helper against another doing the same arithmetic in another order (TL's own tests: 1e-7 .. 1e-5)
SAME_TOL = 1e-5


@pytest.fixture(scope="module")
def run():
    from hooked_vlm import HookedVLM
    from hooked_vlm.toy.data import make_scene, prompt

    model = HookedVLM.from_pretrained("toy-llava")
    images = [make_scene(np.random.default_rng(s)).pil() for s in (0, 1)]
    inputs = model.prepare_inputs(images=images, text=[prompt("colour"), prompt("shape")])
    with torch.no_grad():
        _, cache = model.run_with_cache(**inputs)
    return model, inputs, cache


def close(a, b, tol=SAME_TOL):
    return a.shape == b.shape and (a - b).abs().max().item() <= tol


def final_resid(model, cache, pos=-1):
    return cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"][:, pos]


def test_accumulated_resid_layers_labels_and_apply_ln(run):
    """Mirrors ::test_logit_accumulated_resid_on_last_layer_variants, ::test_logit_accumulated_resid_without_mid and
    ::test_accumulated_resid_with_apply_ln; and each entry is the cached residual it names."""
    model, _, cache = run
    n = model.cfg.n_layers
    acc = cache.accumulated_resid(layer=-1, incl_mid=True, pos_slice=-1)
    assert torch.equal(acc, cache.accumulated_resid(layer=n, incl_mid=True, pos_slice=-1))
    assert torch.equal(acc, cache.accumulated_resid(layer=None, incl_mid=True, pos_slice=-1))
    stack, labels = cache.accumulated_resid(layer=-1, incl_mid=False, pos_slice=-1, return_labels=True)
    assert len(labels) == stack.shape[0] and not any("mid" in x for x in labels)
    scaled, labels = cache.accumulated_resid(layer=None, incl_mid=True, pos_slice=Slice(-1), apply_ln=True,
                                             return_labels=True)
    assert labels == [f"{l}_{k}" for l in range(n) for k in ("pre", "mid")] + ["final_post"]
    assert close(scaled, cache.apply_ln_to_stack(acc, layer=-1, pos_slice=-1, recompute_ln=True))
    names = [f"blocks.{l}.hook_resid_{k}" for l in range(n) for k in ("pre", "mid")] + [f"blocks.{n - 1}.hook_resid_post"]
    assert all(torch.equal(acc[i], cache[name][:, -1]) for i, name in enumerate(names))


def test_apply_ln_recompute_ln_differs_from_cached(run):
    """Mirrors ::test_apply_ln_recompute_ln_differs_from_cached."""
    _, _, cache = run
    acc = cache.accumulated_resid(layer=-1, incl_mid=True, pos_slice=-1)
    fresh = cache.apply_ln_to_stack(acc, layer=-1, pos_slice=-1, recompute_ln=True)
    cached = cache.apply_ln_to_stack(acc, layer=-1, pos_slice=-1, recompute_ln=False)
    assert fresh.shape == cached.shape and not torch.allclose(fresh, cached, atol=1e-7)


def test_final_entry_is_the_final_norms_output_on_both_paths(run):
    """The identity behind ::test_apply_ln_recompute_ln_differs_from_cached and ::test_accumulated_resid_with_apply_ln:
    the last accumulated entry IS the final residual, so normalising it with the cached scale or a recomputed one
    gives the same, and that is what the final norm output (ln_final.hook_normalized). In TL (fold_ln) both paths
    leave the weight out; here both must put it in."""
    _, _, cache = run
    acc = cache.accumulated_resid(layer=-1, incl_mid=True, pos_slice=-1)
    fresh = cache.apply_ln_to_stack(acc, layer=-1, pos_slice=-1, recompute_ln=True)
    cached = cache.apply_ln_to_stack(acc, layer=-1, pos_slice=-1, recompute_ln=False)
    assert close(fresh[-1], cache["ln_final.hook_normalized"][:, -1])
    assert close(cached[-1], cache["ln_final.hook_normalized"][:, -1])


def test_decompose_resid(run):
    """Mirrors ::test_decompose_resid_with_apply_ln and ::test_decompose_resid_including_attention; and the pieces
    (embeddings, image embeddings at image positions included, attention and MLP outputs) sum to the residual."""
    model, _, cache = run
    per_layer, labels = cache.decompose_resid(layer=-1, pos_slice=-1, return_labels=True)
    assert close(cache.decompose_resid(layer=None, pos_slice=Slice(-1), apply_ln=True),
                 cache.apply_ln_to_stack(per_layer, layer=-1, pos_slice=-1))
    attn = cache.decompose_resid(layer=1, pos_slice=Slice(-1), mlp_input=True, apply_ln=False, incl_embeds=False,
                                 mode="attn")
    assert torch.equal(attn, torch.stack([cache["attn_out", l][:, -1] for l in range(model.cfg.n_layers)]))
    assert labels[0] == "embed" and labels[1:] == [f"{l}_{k}_out" for l in range(model.cfg.n_layers)
                                                   for k in ("attn", "mlp")]
    assert close(per_layer.sum(0), final_resid(model, cache), SUM_TOL)


def test_stack_head_results(run):
    """Mirrors ::test_stack_head_results_with_apply_ln and ::test_stack_head_results_including_remainder; and the
    heads of a layer plus its output bias are its attention output."""
    model, _, cache = run
    heads = cache.stack_head_results(layer=-1, pos_slice=-1)
    assert close(cache.stack_head_results(layer=-1, pos_slice=-1, apply_ln=True),
                 cache.apply_ln_to_stack(heads, layer=None, pos_slice=Slice(-1)))
    stack, labels = cache.stack_head_results(layer=1, pos_slice=-1, incl_remainder=True, return_labels=True)
    assert labels == [f"L0H{h}" for h in range(model.cfg.n_heads)] + ["remainder"]
    assert close(stack[-1], cache["resid_post", 0][:, -1] - stack[:-1].sum(0))
    stack, labels = cache.stack_head_results(layer=0, pos_slice=-1, incl_remainder=False, return_labels=True)
    assert labels == [] and not stack.any()
    for l in range(model.cfg.n_layers):
        per_head = heads[l * model.cfg.n_heads:(l + 1) * model.cfg.n_heads]
        assert close(per_head.sum(0) + model.blocks[l].attn.b_O, cache["attn_out", l][:, -1])


def test_stack_neuron_results(run):
    """Mirrors ::test_stack_neuron_results_with_apply_ln, ::test_stack_neuron_results_including_remainder and
    ::test_stack_neuron_results_using_neuron_slice; and a layer's neurons plus its output bias are its MLP output."""
    model, _, cache = run
    neurons = cache.stack_neuron_results(layer=-1, pos_slice=-1)
    assert close(cache.stack_neuron_results(layer=-1, pos_slice=Slice(-1), apply_ln=True),
                 cache.apply_ln_to_stack(neurons, layer=-1, pos_slice=-1))
    stack, labels = cache.stack_neuron_results(layer=1, pos_slice=Slice(-1), incl_remainder=True, return_labels=True)
    assert labels == [f"L0N{i}" for i in range(model.cfg.d_mlp)] + ["remainder"]
    assert close(stack[-1], cache["resid_post", 0][:, -1] - stack[:-1].sum(0), SUM_TOL)
    _, labels = cache.stack_neuron_results(layer=1, pos_slice=Slice(-1), neuron_slice=Slice([0, 1, 2]),
                                           return_labels=True)
    assert labels == [f"L0N{i}" for i in range(3)]
    assert close(neurons[: model.cfg.d_mlp].sum(0) + model.blocks[0].mlp.b_out, cache["mlp_out", 0][:, -1], SUM_TOL)


def test_get_neuron_results(run):
    """Mirrors ::test_get_neuron_results and ::test_get_neuron_results_without_slice."""
    model, _, cache = run
    w_out = model.blocks[1].mlp.W_out  # [d_mlp, d_model]
    post = cache["blocks.1.mlp.hook_post"]
    assert close(cache.get_neuron_results(1, neuron_slice=[0, 1], pos_slice=-1), post[:, -1, :2, None] * w_out[:2])
    assert torch.equal(cache.get_neuron_results(1, neuron_slice=None, pos_slice=None), post[..., None] * w_out)


def test_project_output_onto(run):
    """Mirrors ::test_get_neuron_results_project_output_onto_1d, ::test_get_neuron_results_project_output_onto_2d,
    ::test_stack_neuron_results_project_output_onto_matches_unprojected,
    ::test_stack_neuron_results_project_incl_remainder, ::test_get_full_resid_decomposition_project_output_onto_1d,
    ::test_get_full_resid_decomposition_project_output_onto_2d, ::test_stack_neuron_results_apply_ln_and_project_1d,
    ::test_stack_neuron_results_apply_ln_and_project_2d, ::test_stack_neuron_results_apply_ln_and_project_incl_remainder,
    ::test_get_full_resid_decomposition_apply_ln_and_project_1d and
    ::test_get_full_resid_decomposition_apply_ln_and_project_2d: projecting onto directions equals projecting the
    unprojected output."""
    model, _, cache = run
    g = torch.Generator().manual_seed(0)
    for dirs in (torch.randn(model.cfg.d_model, generator=g), torch.randn(model.cfg.d_model, 3, generator=g)):
        assert close(cache.get_neuron_results(1, project_output_onto=dirs), cache.get_neuron_results(1) @ dirs)
        for kw in ({}, {"incl_remainder": True}, {"apply_ln": True}, {"apply_ln": True, "incl_remainder": True}):
            assert close(cache.stack_neuron_results(model.cfg.n_layers, pos_slice=-1, project_output_onto=dirs, **kw),
                         cache.stack_neuron_results(model.cfg.n_layers, pos_slice=-1, **kw) @ dirs), kw
        for apply_ln in (False, True):
            full = cache.get_full_resid_decomposition(layer=-1, pos_slice=-1, expand_neurons=True, apply_ln=apply_ln)
            assert close(cache.get_full_resid_decomposition(layer=-1, pos_slice=-1, expand_neurons=True,
                                                            apply_ln=apply_ln, project_output_onto=dirs), full @ dirs)


def test_get_full_resid_decomposition(run):
    """Mirrors ::test_get_full_resid_decomposition, ::test_get_full_resid_decomposition_with_neurons_expanded and
    ::test_get_full_resid_decomposition_without_applying_ln: heads, MLP layers (or neurons), embeddings and biases in
    TL's order, each equal to its own helper's output; without the norm they sum to the final residual."""
    model, _, cache = run
    n = model.cfg.n_layers
    heads, head_labels = cache.stack_head_results(layer=n, pos_slice=Slice(-1), apply_ln=True, return_labels=True)
    mlps, mlp_labels = cache.decompose_resid(layer=n, mlp_input=False, pos_slice=Slice(-1), incl_embeds=False,
                                             mode="mlp", apply_ln=True, return_labels=True)
    stack, labels = cache.get_full_resid_decomposition(layer=-1, pos_slice=-1, apply_ln=True, expand_neurons=False,
                                                       return_labels=True)
    h, m = heads.shape[0], mlps.shape[0]
    assert labels == head_labels + mlp_labels + ["embed", "bias"]  # no pos_embed: rotary positions
    assert close(stack[:h], heads) and close(stack[h:h + m], mlps)
    assert close(stack[h + m], cache.apply_ln_to_stack(cache["embed"][None, :, -1], pos_slice=Slice(-1))[0])
    raw = cache.get_full_resid_decomposition(layer=-1, pos_slice=-1, apply_ln=False, expand_neurons=True)
    assert close(raw.sum(0), final_resid(model, cache), SUM_TOL)
    neurons = cache.stack_neuron_results(1, pos_slice=Slice(-1))
    expanded = cache.get_full_resid_decomposition(layer=1, pos_slice=Slice(-1), apply_ln=True, expand_neurons=True)
    h1 = model.cfg.n_heads
    assert close(expanded[h1:h1 + neurons.shape[0]], cache.apply_ln_to_stack(neurons, layer=1, pos_slice=Slice(-1)))
    unscaled = cache.get_full_resid_decomposition(layer=1, pos_slice=Slice(-1), apply_ln=False, expand_neurons=True)
    assert close(unscaled[h1:h1 + neurons.shape[0]], neurons)


def test_compute_head_results_does_not_compute_twice(run):
    """Mirrors ::test_compute_test_head_results_does_not_compute_results_twice (on a copy of the cache)."""
    model, _, cache = run
    copy = type(cache)({k: v.clone() for k, v in cache.items() if "hook_result" not in k}, model, spans=cache.spans)
    assert "blocks.0.attn.hook_result" not in copy.cache_dict
    copy.compute_head_results()
    result = copy.cache_dict["blocks.0.attn.hook_result"]  # [batch, pos, head, d_model]
    assert close(result.sum(2) + model.blocks[0].attn.b_O, copy["attn_out", 0])
    result[0, 0, 0, 0] = float("inf")
    copy.compute_head_results()
    assert copy.cache_dict["blocks.0.attn.hook_result"][0, 0, 0, 0] == float("inf")


def test_logit_attrs_matches_reference_code(run):
    """Mirrors ::test_logit_attrs_matches_reference_code and ::test_logit_attrs_works_for_all_input_shapes (tensor,
    int and per-item tokens, a stack without batch dim, mismatched shapes refused, no incorrect tokens); string
    tokens belong to the token helpers' tests. Directions are asked one column at a time (see the next test)."""
    model, _, cache = run
    tok = model.tokenizer.convert_tokens_to_ids
    answers = torch.tensor([[tok("red"), tok("blue")], [tok("circle"), tok("square")]])
    acc = cache.accumulated_resid(layer=-1, incl_mid=True, pos_slice=-1)
    right, wrong = (model.tokens_to_residual_directions(answers[:, j]) for j in (0, 1))  # [batch, d_model]
    scaled = cache.apply_ln_to_stack(acc, layer=-1, pos_slice=-1)
    ref = (scaled * (right - wrong)).sum(-1)  # [component, batch]
    attrs = cache.logit_attrs(acc, pos_slice=-1, tokens=answers[:, 0], incorrect_tokens=answers[:, 1])
    assert close(attrs, ref)
    b = -1
    one = cache.logit_attrs(acc, batch_slice=b, pos_slice=Slice(-1), tokens=answers[b, 0], incorrect_tokens=answers[b, 1])
    as_int = cache.logit_attrs(acc, batch_slice=Slice(b), pos_slice=-1, tokens=int(answers[b, 0]),
                               incorrect_tokens=int(answers[b, 1]))
    no_batch = cache.logit_attrs(acc[:, b], has_batch_dim=False, batch_slice=b, pos_slice=-1, tokens=answers[b, 0],
                                 incorrect_tokens=answers[b, 1])
    assert close(one, ref[:, b]) and close(as_int, ref[:, b]) and close(no_batch, ref[:, b])
    with pytest.raises(ValueError):
        cache.logit_attrs(acc, pos_slice=-1, tokens=answers[:, 0], incorrect_tokens=answers[:1, 1])
    assert close(cache.logit_attrs(acc, pos_slice=-1, tokens=answers[:, 0]), (scaled * right).sum(-1))


def test_tokens_to_residual_directions_of_answer_pairs(run):
    """The call of ::test_logit_attrs_matches_reference_code: directions of a [batch, 2] tensor of (right, wrong)
    answer ids are [batch, 2, d_model], entry [b, j] the direction of answers[b, j]."""
    model, _, _ = run
    tok = model.tokenizer.convert_tokens_to_ids
    answers = torch.tensor([[tok("red"), tok("blue")], [tok("circle"), tok("square")]])
    dirs = model.tokens_to_residual_directions(answers)
    assert dirs.shape == (2, 2, model.cfg.d_model)
    assert all(torch.equal(dirs[b, j], model.tokens_to_residual_directions(int(answers[b, j])))
               for b in range(2) for j in range(2))
