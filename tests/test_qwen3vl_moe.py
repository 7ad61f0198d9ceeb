"""Qwen3-VL-MoE (Qwen3VLMoeForConditionalGeneration) against HF on a tiny random checkpoint (tests/tiny_qwen3vl.py).

4 experts, top-2, expert width 8; layers 0 and 2 are MoE, layer 1 dense (mlp_only_layers). Same batch and tolerances
as tests/test_qwen3vl.py: fp32 1e-4 absolute vs HF, 1e-5 between our fast and explicit attention paths.
"""

from __future__ import annotations

import functools

import pytest
import torch

from converters import get_converter
from converters.base import UnsupportedConfigError
from hooked_vlm import HookedVLM
from hooked_vlm.components.moe import MoEMLP
from tests import tiny
from tests import tiny_qwen3vl as tq
from tests.tiny import max_abs_diff as _max, real_positions as _real  # the shared comparison helpers

ATOL = 1e-4


@functools.lru_cache(maxsize=None)
def built():
    folder, hf = tq.make_qwen3vl_moe()
    return folder, hf, HookedVLM.from_pretrained(str(folder)), tq.batch()


def test_mlp_kind_per_layer_follows_hf():
    _, hf, model, _ = built()
    kinds = [type(b.mlp).__name__ for b in model.blocks]
    hf_kinds = [type(layer.mlp).__name__ for layer in hf.model.language_model.layers]
    assert kinds == ["MoEMLP", "MLP", "MoEMLP"]
    assert hf_kinds == ["Qwen3VLMoeTextSparseMoeBlock", "Qwen3VLMoeTextMLP", "Qwen3VLMoeTextSparseMoeBlock"]


def test_logits_and_residuals_match_hf_on_both_paths():
    _, hf, model, inputs = built()
    real = _real(inputs)
    hooks = [(f"blocks.{l}.attn.hook_pattern", lambda t, hook: t) for l in range(model.cfg.n_layers)]
    with tiny.final_norm_input(hf) as last, torch.no_grad():
        out = hf(**inputs, output_hidden_states=True)
        logits, cache = model.run_with_cache(**inputs)
        explicit = model.run_with_hooks(**inputs, fwd_hooks=hooks)
    assert _max(out.logits, logits, real) <= ATOL
    assert _max(out.logits, explicit, real) <= ATOL
    n = model.cfg.n_layers
    for layer in range(n):  # the last block against HF's final-norm input
        hf_state = out.hidden_states[layer + 1] if layer < n - 1 else last["x"]
        assert _max(hf_state, cache[f"blocks.{layer}.hook_resid_post"], real) <= ATOL, layer


def test_router_logits_chosen_experts_and_weights_match_hf():
    _, hf, model, inputs = built()
    with torch.no_grad():
        ref = hf(**inputs, output_router_logits=True).router_logits  # one [batch * pos, n_experts] per MoE layer
        _, cache = model.run_with_cache(**inputs, names_filter=lambda n: ".mlp.hook_" in n or n.endswith("ln2.hook_normalized"))
    assert len(ref) == len(tq.MOE_LAYERS)
    for ref_logits, layer in zip(ref, tq.MOE_LAYERS):
        ours = cache[f"blocks.{layer}.mlp.hook_router_logits"]
        assert ours.shape == (*inputs["input_ids"].shape, 4)
        assert _max(ref_logits, ours.reshape(-1, 4)) <= ATOL
        gate = hf.model.language_model.layers[layer].mlp.gate
        with torch.no_grad():
            _, weights, indices = gate(cache[f"blocks.{layer}.ln2.hook_normalized"].reshape(-1, model.cfg.d_model))
        assert torch.equal(cache[f"blocks.{layer}.mlp.hook_expert_indices"].reshape(-1, 2), indices)
        assert _max(cache[f"blocks.{layer}.mlp.hook_expert_weights"].reshape(-1, 2), weights) <= 1e-6
        assert cache[f"blocks.{layer}.mlp.hook_expert_out"].shape == (*inputs["input_ids"].shape, 2, model.cfg.d_model)
    assert len(cache[f"blocks.{tq.MOE_LAYERS[0]}.mlp.hook_expert_indices"].unique()) > 2, "tokens use several experts"


def test_routing_ties_break_as_hf():
    """Experts 1 and 2 have identical router rows, so their probabilities tie for every token: the same experts win."""
    from transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe import Qwen3VLMoeTextTopKRouter

    _, hf, model, _ = built()
    ours: MoEMLP = model.blocks[0].mlp
    ref = Qwen3VLMoeTextTopKRouter(hf.config.text_config)
    with torch.no_grad():
        w = torch.randn(4, model.cfg.d_model)
        w[2] = w[1]
        w[3] = w[1] - 5.0 * w[1].sign()  # expert 3 never wins: the top-2 are always a tie or include it
        ref.weight.copy_(w)
        router = ours.router.weight.clone()
        ours.router.weight.copy_(w)
        try:
            x = torch.randn(1, 64, model.cfg.d_model)
            indices, weights = ours.route(x)
        finally:
            ours.router.weight.copy_(router)
        _, ref_weights, ref_indices = ref(x.reshape(64, -1))
    tied = (indices.reshape(64, 2).sort(-1).values == torch.tensor([1, 2])).all(-1)
    assert tied.any(), "some tokens must be decided by the tie"
    assert torch.equal(indices.reshape(64, 2), ref_indices)
    assert _max(weights.reshape(64, 2), ref_weights) <= 1e-6


def test_dropping_the_first_choice_equals_hf_with_that_weight_zeroed(monkeypatch):
    """hook_expert_weights[..., 0] = 0 in layer 0 == HF with its router's first top-k score zeroed (no renormalising)."""
    from transformers.models.qwen3_vl_moe import modeling_qwen3_vl_moe as mm

    _, hf, model, inputs = built()
    real = _real(inputs)

    def drop_first(w, hook):
        w = w.clone()
        w[..., 0] = 0
        return w

    with torch.no_grad():
        base = model(**inputs)
        ours = model.run_with_hooks(**inputs, fwd_hooks=[("blocks.0.mlp.hook_expert_weights", drop_first)])
    original = mm.Qwen3VLMoeTextTopKRouter.forward
    layer0 = hf.model.language_model.layers[0].mlp.gate

    def patched(self, hidden_states):
        logits, scores, indices = original(self, hidden_states)
        if self is layer0:
            scores = scores.clone()
            scores[:, 0] = 0
        return logits, scores, indices

    monkeypatch.setattr(mm.Qwen3VLMoeTextTopKRouter, "forward", patched)
    with torch.no_grad():
        ref = hf(**inputs).logits
    assert _max(ref, ours, real) <= ATOL
    assert _max(base, ours, real) > 1e-3


def test_per_expert_outputs_sum_to_the_mlp_output():
    _, _, model, inputs = built()
    _, cache = model.run_with_cache(**inputs, names_filter=lambda n: n.startswith("blocks.2."))
    out, w = cache["blocks.2.mlp.hook_expert_out"], cache["blocks.2.mlp.hook_expert_weights"]
    assert _max((out * w[..., None]).sum(-2), cache["blocks.2.hook_mlp_out"]) <= 1e-6
    assert (out[..., 0, :] - out[..., 1, :]).abs().amax().item() > 1e-3  # the two chosen experts differ


def test_greedy_generate_matches_hf():
    """With the KV cache (HF's default). This random model generates the image placeholder id itself; without a KV
    cache hooked_vlm re-runs the grown prompt with the images and refuses the extra placeholder (tests/test_qwen3vl.py
    checks use_kv_cache=False on the dense model, which does not)."""
    _, hf, model, inputs = built()
    with torch.no_grad():
        ref = hf.generate(**inputs, max_new_tokens=10, do_sample=False)
    ours = model.generate(**inputs, max_new_tokens=10, return_type="tokens", use_kv_cache=True)
    assert ref.shape[1] == inputs["input_ids"].shape[1] + 10
    assert torch.equal(ref, ours)


@pytest.mark.parametrize("fields,match", [({"norm_topk_prob": False}, "norm_topk_prob"),
                                          ({"num_experts_per_tok": 5}, "n_experts_per_tok")])
def test_bad_moe_configs_are_refused(fields, match):
    hf_config = tq.moe_hf_config(text=tq.moe_text_config(**fields))
    with pytest.raises((UnsupportedConfigError, ValueError), match=match):
        get_converter("Qwen3VLMoeForConditionalGeneration").make_config(hf_config)


def test_decoder_sparse_step_picks_the_moe_layers():
    hf_config = tq.moe_hf_config(text=tq.moe_text_config(decoder_sparse_step=2, mlp_only_layers=[]))
    t = get_converter("Qwen3VLMoeForConditionalGeneration").make_config(hf_config).text
    assert t.moe_layers == (1,)  # (l + 1) % 2 == 0
