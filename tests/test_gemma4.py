"""Gemma 4 parts beyond the parity CASES (tests/test_parity.py: gemma4-ple-kv-sharing, gemma4-k-eq-v): KV sharing
under hook edits and in the KV cache, per-layer inputs at their hooks, what the converter refuses."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from converters.base import UnsupportedConfigError
from converters.gemma4 import gemma4_config
from hooked_vlm.analysis import knockout_hooks
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
    if hasattr(type(b.hf.config.text_config), "kv_sharing_modes"):  # transformers >= 5.23 names the roles
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


@pytest.mark.parametrize("field, value", [("use_bidirectional_attention", "all")])
def test_unimplemented_text_fields_are_refused_by_name(field, value):
    with pytest.raises(UnsupportedConfigError, match=field):
        gemma4_config(_hf_config("k_eq_v_moe", **{field: value}))


def test_clipped_linears_and_audio_are_refused_by_name():
    from transformers import Gemma4AudioConfig

    cfg = _hf_config("k_eq_v_moe")
    cfg.vision_config.use_clipped_linears = True
    with pytest.raises(UnsupportedConfigError, match="use_clipped_linears"):
        gemma4_config(cfg)
    cfg = _hf_config("k_eq_v_moe")
    cfg.audio_config = Gemma4AudioConfig()
    with pytest.raises(UnsupportedConfigError, match="audio_config"):
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


# ---------------------------------------------------------------- the image tower and the bidirectional image mask
def _real(inputs):
    return inputs["attention_mask"].bool()


@pytest.mark.parametrize("variant", ["ple_kv", "k_eq_v_moe"])
def test_vision_tower_every_layer_and_image_embeddings_match_hf(variant):
    b = tg4.gemma4(variant)
    pixels, positions = b.inputs["pixel_values"], b.inputs["image_position_ids"]
    valid = (positions != -1).all(-1)
    tower = b.hf.model.vision_tower
    outs, handles = [], [layer.register_forward_hook(lambda m, a, out: outs.append(out)) for layer in tower.encoder.layers]
    handles.append(tower.patch_embedder.register_forward_hook(lambda m, a, out: outs.insert(0, out)))
    try:
        with torch.no_grad():
            ref = tower(pixel_values=pixels, pixel_position_ids=positions)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        features = torch.cat(b.hf.model.get_image_features(pixels, positions).pooler_output)
        _, cache = b.model.run_with_cache(**b.inputs, names_filter=lambda n: n.startswith("vision.")
                                          or n == "hook_image_embeds")
    assert len(outs) == 3
    assert (outs[0][valid] - cache["vision.hook_patch_embed"][valid]).abs().max() <= ATOL
    for layer in range(2):
        ours = cache[f"vision.blocks.{layer}.hook_resid_post"]
        assert (outs[layer + 1][valid] - ours[valid]).abs().max() <= ATOL, layer
    assert (ref.last_hidden_state - cache["vision.hook_standardized"]).abs().max() <= ATOL
    assert features.shape == cache["hook_image_embeds"].shape == (4 + 6 + 4, 32)
    assert (features - cache["hook_image_embeds"]).abs().max() <= ATOL


def test_image_spans_have_the_pooled_grid():
    b = tg4.gemma4("k_eq_v_moe")
    _, cache = b.model.run_with_cache(**b.inputs, names_filter="hook_embed")
    spans = cache.spans
    assert [spans.n_images(i) for i in range(3)] == [1, 2, 0]
    assert [(lay.rows, lay.cols) for lay in spans.layouts[1]] == [(2, 3), (2, 2)]
    cells = spans.grid[1, spans.positions("image.0", 1)]
    assert cells[:, 2:].tolist() == [[r, c] for r in range(2) for c in range(3)]  # (row, col), row-major


def _hf_masks(hf, inputs):
    from transformers.models.gemma4 import modeling_gemma4 as mg

    ids = inputs["input_ids"]
    kwargs = dict(config=hf.config.get_text_config(), inputs_embeds=torch.zeros(*ids.shape, 1),
                  attention_mask=inputs["attention_mask"], past_key_values=None,
                  position_ids=torch.arange(ids.shape[1])[None])
    blocks = mg.get_block_sequence_ids_for_mask(inputs["mm_token_type_ids"], device=ids.device)
    return mg.create_masks_for_vision_model(block_sequence_ids=blocks, **kwargs)


def test_hook_mask_of_every_layer_equals_hf_mask():
    """Bidirectional inside each image on sliding layers only (Gemma 4: full layers stay causal)."""
    b = tg4.gemma4("k_eq_v_moe")
    ref = _hf_masks(b.hf, b.inputs)
    _, cache = b.model.run_with_cache(**b.inputs, names_filter=lambda n: n.endswith("hook_mask"))
    real = _real(b.inputs)
    for layer, kind in enumerate(tg4.LAYER_TYPES):
        ours = cache[f"blocks.{layer}.attn.hook_mask"][:, 0]
        assert torch.equal(ours[real], ref[kind][:, 0][real]), (layer, kind)
    first = int((b.inputs["input_ids"][0] == tg4.IMAGE).nonzero()[0])
    assert bool(cache["blocks.0.attn.hook_mask"][0, 0, first, first + 3])  # sliding: sees a later token of its image
    assert not bool(cache["blocks.1.attn.hook_mask"][0, 0, first, first + 3])  # full: causal


def test_mm_token_type_ids_switch_the_bidirectional_mask_as_in_hf():
    b = tg4.gemma4("k_eq_v_moe")
    causal = {k: v for k, v in b.inputs.items() if k != "mm_token_type_ids"}
    real = _real(b.inputs)
    with torch.no_grad():
        ref = b.hf(**causal).logits
        ours = b.model(**causal)
        bidi = b.model(**b.inputs)
    assert (ref - ours)[real].abs().max() <= ATOL
    assert (bidi - ours)[real].abs().max() > 1e-3


@pytest.mark.parametrize("src,dst", [("image", "last"), ("image", "image")])
def test_mask_knockout_equals_hf_with_the_edges_removed_by_hand(src, dst):
    """knockout (an edit of every layer's hook_mask) on the bidirectional model == HF given its own per-kind masks with
    the src -> dst edges set to False by hand (Gemma4Model takes a prepared mask mapping as is)."""
    b = tg4.gemma4("k_eq_v_moe")
    inputs = b.inputs
    masks = _hf_masks(b.hf, inputs)
    is_image = (inputs["input_ids"] == tg4.IMAGE) & _real(inputs)
    is_last = torch.zeros_like(is_image)
    is_last[:, -1] = True
    q = is_last if dst == "last" else is_image
    blocked = q[:, None, :, None] & is_image[:, None, None, :]
    edited = {kind: m & ~blocked for kind, m in masks.items()}
    hf_inputs = {k: v for k, v in inputs.items() if k not in ("attention_mask", "mm_token_type_ids")}
    with torch.no_grad():
        ref = b.hf(**hf_inputs, attention_mask=edited).logits
        base = b.model(**inputs)
        ours = b.model.run_with_hooks(**inputs, fwd_hooks=knockout_hooks(b.model, src=src, dst=dst, mode="mask"))
    real = _real(inputs)
    assert (ref - ours)[real].abs().max() <= ATOL
    assert (base - ours)[real].abs().max() > 1e-3


def test_prompts_are_longer_than_the_window_with_an_image_inside_and_the_window_acts(monkeypatch):
    b = tg4.gemma4("k_eq_v_moe")
    inputs, real = b.inputs, _real(b.inputs)
    window = b.model.cfg.text.sliding_window
    for row in range(2):  # the rows with images: an image, then text reaching past the window
        ids = inputs["input_ids"][row][real[row]]
        first = int((ids == tg4.IMAGE).nonzero()[0])
        assert len(ids) - 1 - first >= window
    with torch.no_grad():
        ref = b.hf(**inputs).logits
        assert (ref - b.model(**inputs))[real].abs().max() <= ATOL
        monkeypatch.setattr(b.model.cfg.text, "sliding_window", 10_000)
        assert (ref - b.model(**inputs))[real].abs().max() > 10 * ATOL


def test_a_config_without_vision_is_the_text_model_and_refuses_pixels():
    from hooked_vlm import HookedVLM

    cfg = _hf_config("ple_kv")
    cfg.vision_config = None
    model = HookedVLM(gemma4_config(cfg))
    assert model.vision is None and "hook_image_embeds" not in model.hook_dict
    inputs = {k: v for k, v in tg4.gemma4("ple_kv").inputs.items() if k in ("input_ids", "attention_mask", "pixel_values")}
    with pytest.raises(ValueError, match="without an image tower"):
        model(**inputs)
    cfg.text_config.use_bidirectional_attention = "vision"
    with pytest.raises(UnsupportedConfigError, match="without a vision_config"):
        gemma4_config(cfg)
