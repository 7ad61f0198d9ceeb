"""Gemma 4 parts beyond the parity CASES (tests/test_parity.py: gemma4-ple-kv-sharing, gemma4-k-eq-v): KV sharing
under hook edits and in the KV cache, per-layer inputs at their hooks, what the converter refuses."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from converters.base import UnsupportedConfigError
from converters.gemma4 import gemma4_config
from hooked_vlm.components.attention import LayerKVCache
from hooked_vlm.kv_cache import KVCache
from tests import tiny_gemma4 as tg4

ATOL = 1e-4
SOURCE, SHARING = 2, 4  # layer 4 (sliding) reads layer 2's keys / values in the "ple_kv" variant


def _edit_head0(t: torch.Tensor) -> torch.Tensor:
    """Scale KV head 0 of keys [batch, pos, kv_head, d_head] by -2 (the same edit on HF's flat [batch, pos, kv * d])."""
    t = t.clone()
    t[..., 0, :] *= -2.0
    return t


def test_the_tiny_model_shares_keys_and_values_as_hf():
    b = tg4.gemma4("ple_kv")
    text = b.model.cfg.text
    assert [text.kv_source(l) for l in range(text.n_layers)] == [None, None, None, None, 2, 3]
    assert b.hf.config.text_config.kv_sharing_modes == [None, None, "store", "store", "reuse", "reuse"]
    for l in (4, 5):  # no projections of their own, double-wide MLP
        attn = b.model.blocks[l].attn
        assert attn.k_proj is None and attn.v_proj is None and not hasattr(attn, "hook_k")
        assert b.model.blocks[l].mlp.up_proj.out_features == 2 * text.d_mlp


@functools.lru_cache(maxsize=None)
def _hf_edited_logits() -> torch.Tensor:
    """HF with the source layer's k_proj output edited (a forward hook on the module)."""
    b = tg4.gemma4("ple_kv")
    attn = b.hf.model.language_model.layers[SOURCE].self_attn
    kvh, dh = b.model.cfg.text.n_key_value_heads, b.model.cfg.text.d_head

    def hook(module, args, out):
        return _edit_head0(out.view(*out.shape[:-1], kvh, dh)).view(out.shape)

    handle = attn.k_proj.register_forward_hook(hook)
    try:
        with torch.no_grad():
            return b.hf(**b.inputs).logits
    finally:
        handle.remove()


def test_editing_the_source_layers_keys_reaches_the_sharing_layer_as_in_hf():
    b = tg4.gemma4("ple_kv")
    real = b.inputs["attention_mask"].bool()
    ref = _hf_edited_logits()
    with torch.no_grad():
        plain = b.model(**b.inputs)
        ours = b.model.run_with_hooks(**b.inputs, fwd_hooks=[(f"blocks.{SOURCE}.attn.hook_k", lambda t, hook: _edit_head0(t))])
    assert (ref[real] - plain[real]).abs().max() > 10 * ATOL  # the edit matters (measured ~1e-2)
    assert (ref[real] - ours[real]).abs().max() <= ATOL


def test_the_sharing_layer_reads_the_source_layers_edited_keys():
    """Only the sharing layer's attention pattern is compared: with the edit at the source, layer 4's pattern equals
    softmax(q4 . k2_edited) computed from the cached source keys after RoPE."""
    b = tg4.gemma4("ple_kv")
    hooks = [(f"blocks.{SOURCE}.attn.hook_k", lambda t, hook: _edit_head0(t))]
    names = [f"blocks.{SOURCE}.attn.hook_rot_k", f"blocks.{SHARING}.attn.hook_rot_q", f"blocks.{SHARING}.attn.hook_pattern"]
    with torch.no_grad(), b.model.hooks(fwd_hooks=hooks):
        _, cache = b.model.run_with_cache(**b.unpadded, names_filter=lambda n: n in names)
    k = cache[names[0]].repeat_interleave(b.model.cfg.n_heads // b.model.cfg.n_key_value_heads, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", cache[names[1]], k) * b.model.blocks[SHARING].attn.scale
    window = b.model.cfg.text.sliding_window
    q = torch.arange(scores.shape[-1])
    allowed = (q[None, :] <= q[:, None]) & (q[:, None] - q[None, :] < window)
    expected = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    assert (expected - cache[names[2]]).abs().max() <= 1e-5


def test_the_kv_cache_holds_no_copies_for_sharing_layers():
    b = tg4.gemma4("ple_kv")
    cache = KVCache(b.model.cfg)
    assert cache.shared == {4: 2, 5: 3}
    assert cache.layers[4] is cache.layers[2] and cache.layers[5] is cache.layers[3]
    assert len({id(s) for s in cache.layers}) == 4 and all(isinstance(s, LayerKVCache) for s in cache.layers)
    with torch.no_grad():
        b.model(**b.unpadded, kv_cache=cache)
    assert cache.layers[2].length == b.unpadded["input_ids"].shape[1]
    broken = KVCache(b.model.cfg)
    broken.layers[4] = LayerKVCache()
    with pytest.raises(ValueError, match="source layer 2"):
        b.model(**b.unpadded, kv_cache=broken)


def test_per_layer_inputs_reach_each_block():
    b = tg4.gemma4("ple_kv")
    names = ["per_layer_inputs.hook_per_layer_inputs"] + [f"blocks.{l}.hook_per_layer_input" for l in range(6)]
    with torch.no_grad():
        _, cache = b.model.run_with_cache(**b.inputs, names_filter=lambda n: n in names)
        zeroed = b.model.run_with_hooks(**b.inputs, fwd_hooks=[("blocks.3.hook_per_layer_input",
                                                                   lambda t, hook: torch.zeros_like(t))])
        plain = b.model(**b.inputs)
    full = cache[names[0]]
    assert full.shape == (*b.inputs["input_ids"].shape, 6, 8)
    for l in range(6):
        assert torch.equal(cache[f"blocks.{l}.hook_per_layer_input"], full[:, :, l])
    assert (zeroed - plain).abs().max() > 1e-3


def _hf_config(variant: str, **text):
    cfg = copy.deepcopy(tg4.tiny_hf_config(variant))
    for key, value in text.items():
        setattr(cfg.text_config, key, value)
    return cfg


@pytest.mark.parametrize("field, value", [("use_bidirectional_attention", "vision")])
def test_unimplemented_text_fields_are_refused_by_name(field, value):
    with pytest.raises(UnsupportedConfigError, match=field):
        gemma4_config(_hf_config("k_eq_v_moe", **{field: value}))


def test_a_vision_tower_is_refused_by_name():
    cfg = _hf_config("k_eq_v_moe")
    from transformers import Gemma4VisionConfig

    cfg.vision_config = Gemma4VisionConfig()
    with pytest.raises(UnsupportedConfigError, match="vision_config"):
        gemma4_config(cfg)


def test_routing_matches_hf_and_the_router_hooks_act():
    """The MoE block beside the dense MLP: chosen experts and their weights (per_expert_scale included) equal HF's
    router's on every real token of every layer; zeroing the weights at one layer changes the logits."""
    b = tg4.gemma4("k_eq_v_moe")
    real = b.inputs["attention_mask"].bool()
    seen, handles = {}, []
    for l, layer in enumerate(b.hf.model.language_model.layers):
        handles.append(layer.router.register_forward_hook(lambda m, a, out, l=l: seen.__setitem__(l, out)))
    try:
        with torch.no_grad():
            b.hf(**b.inputs)
    finally:
        for h in handles:
            h.remove()
    names = [f"blocks.{l}.moe.hook_expert_{w}" for l in range(6) for w in ("indices", "weights")]
    with torch.no_grad():
        _, cache = b.model.run_with_cache(**b.inputs, names_filter=lambda n: n in names)
    for l in range(6):
        _, weights, indices = seen[l]
        shape = (*real.shape, -1)
        assert torch.equal(indices.view(shape)[real], cache[f"blocks.{l}.moe.hook_expert_indices"][real])
        assert (weights.view(shape)[real] - cache[f"blocks.{l}.moe.hook_expert_weights"][real]).abs().max() <= 1e-5
    with torch.no_grad():
        plain = b.model(**b.inputs)
        off = b.model.run_with_hooks(**b.inputs, fwd_hooks=[("blocks.2.moe.hook_expert_weights",
                                                                lambda t, hook: torch.zeros_like(t))])
    assert (off - plain)[real].abs().max() > 1e-3
