"""Llama 4 language model parts against HF's Llama4ForCausalLM (tests/tiny_llama4.py): chunked local attention,
NoPE layers with temperature tuning, L2 q/k norm after RoPE, MoE with a shared expert and sigmoid input-weighted
routing. Default (SDPA) and explicit paths, every residual, left-padded batch longer than the chunk, greedy decoding
with and without the KV cache, the chunked mask at hook_mask, router hooks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from hooked_vlm import HookedVLM
from tests import tiny_llama4 as tl
from tests.tiny import max_abs_diff as _max, pattern_hooks

ATOL = 1e-4  # ours vs HF, fp32
FAST_ATOL = 1e-5  # fast (SDPA) vs explicit path


def _hf_hidden(b, ids, mask):
    with torch.no_grad():
        out = b.hf(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    return out.logits, out.hidden_states  # hidden_states[l] = resid_pre of block l; the last is after the norm


@pytest.mark.parametrize("explicit", [False, True])
def test_logits_and_every_residual_match_hf_on_a_padded_batch_longer_than_the_chunk(explicit):
    b = tl.llama4_lm()
    ids, mask = tl.padded_batch()
    assert ids.shape[1] > 2 * tl.CHUNK  # three chunks per row
    ref, hidden = _hf_hidden(b, ids, mask)
    hooks = pattern_hooks(b.model) if explicit else []
    with torch.no_grad(), b.model.hooks(fwd_hooks=hooks):
        logits, cache = b.model.run_with_cache(input_ids=ids, attention_mask=mask)
    real = mask.bool()
    assert ref.abs().max() > 0.1
    assert _max(ref[real], logits[real]) <= ATOL
    for l in range(b.model.cfg.n_layers):
        assert _max(hidden[l][real], cache[f"blocks.{l}.hook_resid_pre"][real]) <= ATOL, l
    assert _max(hidden[-1][real], cache["ln_final.hook_normalized"][real]) <= ATOL


def test_fast_path_equals_explicit_path():
    b = tl.llama4_lm()
    ids, mask = tl.padded_batch()
    with torch.no_grad():
        fast = b.model(input_ids=ids, attention_mask=mask)
        explicit = b.model.run_with_hooks(input_ids=ids, attention_mask=mask, fwd_hooks=pattern_hooks(b.model))
    assert _max(fast[mask.bool()], explicit[mask.bool()]) <= FAST_ATOL


@pytest.mark.parametrize("use_kv_cache", [True, False])
def test_greedy_generation_matches_hf(use_kv_cache):
    b = tl.llama4_lm()
    ids, mask = tl.padded_batch(seed=4, length=12, pads=(0, 3))  # 12 + 10 tokens: the chunk boundary at 8 and 16
    with torch.no_grad():
        ref = b.hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False,
                            pad_token_id=0, eos_token_id=None)
        ours = b.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, use_kv_cache=use_kv_cache,
                                stop_at_eos=False, return_type="tokens")
    assert torch.equal(ref[:, ids.shape[1]:], ours[:, ids.shape[1]:])


def test_chunked_layers_show_the_chunked_mask_and_full_layers_the_causal_one():
    """hook_mask of a chunked layer is HF's chunked causal mask, chunks starting at each row's first real token."""
    from transformers.masking_utils import create_chunked_causal_mask, create_causal_mask

    b = tl.llama4_lm()
    ids, mask = tl.padded_batch()
    _, cache = b.model.run_with_cache(input_ids=ids, attention_mask=mask, names_filter=lambda n: n.endswith("hook_mask"))
    embeds = b.hf.model.embed_tokens(ids)
    cfg = b.hf.config
    prev = cfg._attn_implementation
    cfg._attn_implementation = "eager"
    try:
        kw = dict(config=cfg, inputs_embeds=embeds, attention_mask=mask, past_key_values=None,
                  position_ids=torch.arange(ids.shape[1])[None])
        hf_masks = {"chunked_attention": create_chunked_causal_mask(**kw) == 0, "full_attention": create_causal_mask(**kw) == 0}
    finally:
        cfg._attn_implementation = prev
    real = mask.bool()[:, None, :, None]  # HF's rows of padded queries differ (they attend nowhere either way)
    for l, kind in enumerate(b.model.cfg.text.layer_types):
        ours = cache[f"blocks.{l}.attn.hook_mask"]
        assert torch.equal(ours & real, hf_masks[kind].expand_as(ours) & real), (l, kind)
    assert not torch.equal(hf_masks["chunked_attention"], hf_masks["full_attention"])


def test_knocking_out_edges_on_a_chunked_layer_fast_equals_explicit():
    b = tl.llama4_lm()
    ids, mask = tl.padded_batch()

    def cut(t, hook):
        t = t.clone()
        t[..., 10:, 8:10] = False  # inside the second chunk
        return t

    fwd = [("blocks.0.attn.hook_mask", cut)]
    with torch.no_grad():
        base = b.model(input_ids=ids, attention_mask=mask)
        fast = b.model.run_with_hooks(input_ids=ids, attention_mask=mask, fwd_hooks=fwd)
        explicit = b.model.run_with_hooks(input_ids=ids, attention_mask=mask, fwd_hooks=fwd + pattern_hooks(b.model))
    real = mask.bool()
    assert _max(base[real], fast[real]) > 1e-3
    assert _max(fast[real], explicit[real]) <= FAST_ATOL


def _variant(b, **changes) -> HookedVLM:
    cfg = dataclasses.replace(b.model.cfg, text=dataclasses.replace(b.model.cfg.text, **changes))
    model = HookedVLM(cfg).eval()
    model.load_state_dict(b.model.state_dict())
    return model


@pytest.mark.parametrize("change", [
    dict(attention_chunk_size=10_000), dict(qk_l2_norm_after_rope=False), dict(attn_temperature_floor=None),
    dict(moe_router="softmax_topk"), dict(rope_interleaved=False)])
def test_each_llama4_part_changes_the_logits(change):
    """The tiny model exercises each part: turning one off moves the logits far beyond the parity tolerance."""
    b = tl.llama4_lm()
    ids, mask = tl.padded_batch()
    with torch.no_grad():
        base = b.model(input_ids=ids, attention_mask=mask)
        other = _variant(b, **change)(input_ids=ids, attention_mask=mask)
    assert _max(base[mask.bool()], other[mask.bool()]) > 100 * ATOL


def test_router_hooks_and_input_weighting():
    """Sigmoid of the top-k logits; the weight scales the expert's INPUT: zeroing a weight drops that expert."""
    b = tl.llama4_lm()
    ids, mask = tl.padded_batch()
    layer = b.model.cfg.text.moe_layers[0]
    moe = b.model.blocks[layer].mlp
    _, cache = b.model.run_with_cache(input_ids=ids, attention_mask=mask)
    logits = cache[f"blocks.{layer}.mlp.hook_router_logits"]
    idx, w = cache[f"blocks.{layer}.mlp.hook_expert_indices"], cache[f"blocks.{layer}.mlp.hook_expert_weights"]
    assert torch.equal(idx, logits.topk(2, dim=-1).indices)
    assert _max(w, torch.sigmoid(logits.gather(-1, idx))) <= 1e-6
    x = cache[f"blocks.{layer}.ln2.hook_normalized"][0, 3]  # one token: expert e on w * x, by hand
    e, we = int(idx[0, 3, 0]), w[0, 3, 0]
    gate, up = torch.nn.functional.linear(x * we, moe.gate_up_proj[e]).chunk(2, dim=-1)
    by_hand = torch.nn.functional.linear(torch.nn.functional.silu(gate) * up, moe.down_proj[e])
    assert _max(cache[f"blocks.{layer}.mlp.hook_expert_out"][0, 3, 0], by_hand) <= 1e-5

    def drop_first(t, hook):
        t = t.clone()
        t[..., 0] = 0
        return t

    with torch.no_grad(), b.model.hooks(fwd_hooks=[(f"blocks.{layer}.mlp.hook_expert_weights", drop_first)]):
        _, dropped = b.model.run_with_cache(input_ids=ids, attention_mask=mask)
    assert dropped[f"blocks.{layer}.mlp.hook_expert_out"][..., 0, :].abs().max() == 0  # expert(0 * x) = 0


def test_temperature_factor_on_nope_layers_only():
    b = tl.llama4_lm()
    kinds = b.model.cfg.text.layer_types
    for l, kind in enumerate(kinds):
        attn = b.model.blocks[l].attn
        assert hasattr(attn, "hook_q_temperature") == (kind == "full_attention")  # NoPE layers
        assert hasattr(attn, "hook_l2_q") == (kind == "chunked_attention")  # RoPE layers
    ids, mask = tl.padded_batch()
    _, cache = b.model.run_with_cache(input_ids=ids, attention_mask=mask, names_filter="blocks.1.attn.hook_q_temperature")
    p = torch.arange(ids.shape[1], dtype=torch.float32)
    expected = torch.log1p(torch.floor((p + 1) / tl.TEXT["floor_scale"])) * tl.TEXT["attn_scale"] + 1
    assert _max(cache["blocks.1.attn.hook_q_temperature"], expected.expand(ids.shape[0], -1)) == 0


def test_converter_refuses_rope_split_across_one_kind():
    from transformers import Llama4TextConfig

    from converters._llama4_text import llama4_text_config
    from converters.base import UnsupportedConfigError

    tc = Llama4TextConfig(**{**tl.TEXT, "layer_types": ["full_attention"] * 4})
    with pytest.raises(UnsupportedConfigError, match="both RoPE and NoPE layers"):
        llama4_text_config(tc)
    with pytest.raises(UnsupportedConfigError, match="router_jitter_noise|does not handle"):
        llama4_text_config(Llama4TextConfig(**{**tl.TEXT, "some_new_field": 3}))


def test_hook_names_are_golden_and_every_hook_fires():
    """Golden names (tests/golden/hook_names_llama4_lm.txt); every hook fires on the padded batch, except
    hook_image_embeds: this LM-only build has no vision tower, so no image embeddings exist to pass through it."""
    from pathlib import Path

    b = tl.llama4_lm()
    golden = (Path(__file__).parent / "golden" / "hook_names_llama4_lm.txt").read_text().split()
    assert sorted(b.model.hook_dict) == golden
    fired = set()
    b.model.run_with_hooks(**b.inputs, fwd_hooks=[(lambda n: True, lambda t, hook: fired.add(hook.name))])
    assert "hook_image_embeds" not in b.model.hook_dict  # a model without a vision tower does not create it
    assert fired == set(b.model.hook_dict)


REAL_LLAMA4 = sorted((Path(__file__).parent / "real_configs").glob("meta-llama__Llama-4-*.json"))


@pytest.mark.parametrize("path", REAL_LLAMA4, ids=[p.stem for p in REAL_LLAMA4])
def test_real_config_language_model_structure_matches_hf(path):
    """The real Scout / Maverick text_config: the converter accepts it; HF's Llama4ForCausalLM on the meta device has
    every tensor mapped onto one of ours with the right shape (after the expert transposes), nothing of ours unset, and
    the same parameter count. (The vision tower and projector of Llama4ForConditionalGeneration are not converted
    yet: tests/test_real_configs.py lists the architecture as unsupported.)"""
    import json
    import tempfile

    from transformers import AutoConfig, Llama4ForCausalLM

    from converters._llama4_text import TEXT_TRANSFORMS, llama4_text_config, llama4_text_rules
    from converters.base import KeyMap
    from hooked_vlm.config import HookedVLMConfig

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "config.json").write_text(path.read_text())
        tc = AutoConfig.from_pretrained(folder).text_config
    assert len(REAL_LLAMA4) == 2 and json.loads(path.read_text())["architectures"] == ["Llama4ForConditionalGeneration"]
    cfg = HookedVLMConfig(architecture="Llama4ForCausalLM", text=llama4_text_config(tc), d_vocab=tc.vocab_size)
    with torch.device("meta"):
        hf = Llama4ForCausalLM(tc)
        ours = HookedVLM(cfg)
    keymap = KeyMap(rules=llama4_text_rules("model"), transforms=TEXT_TRANSFORMS)
    our_params = dict(ours.named_parameters())
    seen = set()
    for name, p in hf.named_parameters():
        target = keymap.target(name)
        shape = p.shape if keymap.transform(target) is None else keymap.transform(target)(p).shape
        assert tuple(our_params[target].shape) == tuple(shape), name
        seen.add(target)
    assert set(our_params) == seen
    n_hf = sum(p.numel() for p in hf.parameters())
    assert sum(p.numel() for p in ours.parameters()) == n_hf
    kinds = cfg.text.layer_types
    assert kinds.count("full_attention") == 12 and cfg.text.attention_chunk_size == 8192  # NoPE every 4th layer
    assert len(cfg.text.moe_layers) == (48 if tc.num_local_experts == 16 else 24)


def test_memory_estimate_sizes_every_lm_hook():
    from hooked_vlm.memory import lm_activation_numels

    with torch.device("meta"):
        model = HookedVLM(tl.llama4_lm().model.cfg)
    numels, unsized = lm_activation_numels(model, 40)
    assert unsized == [] and numels["blocks.1.attn.hook_q_temperature"] == (40, False)
    assert numels["blocks.1.mlp.hook_expert_out"] == (40 * 2 * 32, False)  # [batch, pos, k, d_model]
