"""Qwen3.5 (hybrid: Gated DeltaNet + gated attention) beyond tests/test_parity.py's CASES lines: the delta rule against
HF's torch functions and a hand computation, state edits through a KV-cache continuation, left padding, the vision
tower, generation without the cache, the cache object, refusals. Tolerances: fp32; 1e-4 vs HF (as test_parity),
1e-5 against hand computations in float32 and between a padded row and the row alone.
"""

from __future__ import annotations

import functools

import pytest
import torch

from hooked_vlm import KVCache
from hooked_vlm.components.delta_rule import chunk_gated_delta_rule, recurrent_gated_delta_rule
from tests import tiny_qwen35 as tq

ATOL = 1e-4
HAND_ATOL = 1e-5


def _max(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def hand_delta_rule(q, k, v, g, beta, state=None):
    """The gated delta rule written out per step (float32): q, k [batch, pos, k_head, d_k] (repeated over the value
    heads), v [batch, pos, head, d_v], g / beta [batch, pos, head] -> (o [batch, pos, head, d_v], final state)."""
    rep = v.shape[2] // k.shape[2]
    q, k = q.repeat_interleave(rep, 2).double(), k.repeat_interleave(rep, 2).double()
    v, g, beta = v.double(), g.double(), beta.double()
    q = q / q.norm(dim=-1, keepdim=True).pow(2).add(1e-6).sqrt() / q.shape[-1] ** 0.5
    k = k / k.norm(dim=-1, keepdim=True).pow(2).add(1e-6).sqrt()
    b, n, h, dk = k.shape
    s = torch.zeros(b, h, dk, v.shape[-1], dtype=torch.double) if state is None else state.double().clone()
    out = torch.zeros_like(v)
    for t in range(n):
        s = s * g[:, t].exp()[..., None, None]
        pred = torch.einsum("bhkv,bhk->bhv", s, k[:, t])
        s = s + torch.einsum("bhk,bhv->bhkv", k[:, t], beta[:, t, :, None] * (v[:, t] - pred))
        out[:, t] = torch.einsum("bhkv,bhk->bhv", s, q[:, t])
    return out.float(), s.float()


@pytest.mark.parametrize("n, chunk", [(11, 4), (8, 4), (1, 64), (30, 64)])
def test_delta_rule_algorithms_equal_hf_and_the_hand_computation(n, chunk):
    from transformers.models.qwen3_5.modeling_qwen3_5 import (torch_chunk_gated_delta_rule,
                                                              torch_recurrent_gated_delta_rule)

    torch.manual_seed(n)
    q, k = torch.randn(2, n, 2, 8), torch.randn(2, n, 2, 8)
    v, g, beta, s0 = torch.randn(2, n, 4, 6), -torch.rand(2, n, 4), torch.rand(2, n, 4), torch.randn(2, 4, 8, 6)
    # HF's functions take q / k with the value heads' count (transformers 5.20 repeats the key heads in the layer
    # before calling them; 5.23 also accepts grouped heads): repeat them here, so both versions run the same call
    qr, kr = q.repeat_interleave(2, dim=2), k.repeat_interleave(2, dim=2)
    hf_c = torch_chunk_gated_delta_rule(qr, kr, v, g, beta, chunk_size=chunk, initial_state=s0, output_final_state=True,
                                        use_qk_l2norm_in_kernel=True)
    hf_r = torch_recurrent_gated_delta_rule(qr, kr, v, g, beta, initial_state=s0, output_final_state=True,
                                            use_qk_l2norm_in_kernel=True)
    ours_c = chunk_gated_delta_rule(q, k, v, g, beta, s0, chunk)
    ours_r = recurrent_gated_delta_rule(q, k, v, g, beta, s0)
    hand = hand_delta_rule(q, k, v, g, beta, s0)
    for ours, ref in ((ours_c, hf_c), (ours_r, hf_r)):
        assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1])  # the same operations: bit for bit
    for ours in (ours_c, ours_r):
        assert _max(ours[0], hand[0]) <= HAND_ATOL and _max(ours[1], hand[1]) <= HAND_ATOL


def built(moe: bool = False):
    b = tq.qwen35(moe)
    return b.hf, b.model, b.inputs


def _capture(names):
    store = {}

    def grab(t, hook):
        store[hook.name] = t.detach().clone()

    return store, [(n, grab) for n in names]


LIN = "blocks.0.linear_attn"


def test_editing_hook_beta_changes_later_positions_as_the_delta_rule_says():
    """beta = 0 at one position: that position writes nothing; every position's delta-rule output (hook_z) equals the
    hand computation with the edited beta, and the positions before it are unchanged."""
    _, model, inputs = built()
    names = [f"{LIN}.hook_{x}" for x in ("q", "k", "v", "g", "beta", "z")]
    clean, hooks = _capture(names)
    model.run_with_hooks(**inputs, fwd_hooks=hooks)
    src = 12

    def no_write(t, hook):
        t = t.clone()
        t[:, src] = 0.0
        return t

    edited, hooks = _capture(names)
    model.run_with_hooks(**inputs, fwd_hooks=[(f"{LIN}.hook_beta", no_write)] + hooks)
    beta = clean[f"{LIN}.hook_beta"].clone()
    beta[:, src] = 0.0
    want, _ = hand_delta_rule(*(clean[f"{LIN}.hook_{x}"] for x in ("q", "k", "v", "g")), beta)
    assert _max(edited[f"{LIN}.hook_z"], want) <= HAND_ATOL
    assert _max(edited[f"{LIN}.hook_z"][:, :src], clean[f"{LIN}.hook_z"][:, :src]) == 0.0
    assert _max(edited[f"{LIN}.hook_z"][:, src:], clean[f"{LIN}.hook_z"][:, src:]) > 1e-4  # hook_z is of scale 1e-3


def test_editing_hook_state_changes_a_kv_cache_continuation_as_the_delta_rule_says():
    """The state hook_state returns is the one the cache keeps: the next position reads the edited state."""
    _, model, inputs = built()
    cache = KVCache(model.cfg)
    edit = torch.randn(model.cfg.text.linear_attention.n_value_heads, 8, 8) * 0.3
    model.run_with_hooks(**inputs, kv_cache=cache, fwd_hooks=[(f"{LIN}.hook_state", lambda t, hook: t + edit)])
    assert cache.length == inputs["input_ids"].shape[1]
    kept = cache.layers[0].recurrent.clone()
    step = dict(input_ids=torch.tensor([[5], [7]]), attention_mask=torch.cat(
        [inputs["attention_mask"], torch.ones(2, 1, dtype=inputs["attention_mask"].dtype)], 1))
    names = [f"{LIN}.hook_{x}" for x in ("q", "k", "v", "g", "beta", "z", "state")]
    seen, hooks = _capture(names)
    model.run_with_hooks(**step, kv_cache=cache, fwd_hooks=hooks)
    want_z, want_state = hand_delta_rule(*(seen[f"{LIN}.hook_{x}"] for x in ("q", "k", "v", "g", "beta")), kept)
    assert _max(seen[f"{LIN}.hook_z"], want_z) <= HAND_ATOL and _max(seen[f"{LIN}.hook_state"], want_state) <= HAND_ATOL
    # and without the edit the continuation differs: the edit is what the new position read
    clean = KVCache(model.cfg)
    model(**inputs, kv_cache=clean)
    unedited, hooks = _capture([f"{LIN}.hook_z"])
    model.run_with_hooks(**step, kv_cache=clean, fwd_hooks=hooks)
    assert _max(unedited[f"{LIN}.hook_z"], seen[f"{LIN}.hook_z"]) > 1e-4


@pytest.mark.parametrize("moe", [False, True])
def test_a_left_padded_row_equals_the_row_alone(moe):
    """Item 1 of the padded batch (3 left pads) against the same row alone: logits, every residual, the final
    recurrent and conv states, and 10 greedy tokens. The padded positions hold real token ids (not the pad id, whose
    embedding is zero): only the attention mask keeps them out of the state."""
    _, model, inputs = built(moe)
    pads = int((inputs["attention_mask"][1] == 0).sum())
    assert pads == 3
    # real tokens under the padding (the pad id's embedding is zero, which would hide a leak): only the mask says pad
    inputs = {**inputs, "input_ids": inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, 7)}
    alone = {k: v[1:, pads:] if k in ("input_ids", "attention_mask", "mm_token_type_ids") else v
             for k, v in inputs.items()}
    n_first = int(inputs["image_grid_thw"].shape[0]) - 2  # item 1 holds the last two images
    n_patch = int(inputs["image_grid_thw"][:n_first].prod(-1).sum())
    alone["pixel_values"], alone["image_grid_thw"] = inputs["pixel_values"][n_patch:], inputs["image_grid_thw"][n_first:]
    caches = KVCache(model.cfg), KVCache(model.cfg)
    resid = lambda n: n.startswith("blocks.") and n.endswith("resid_post")  # noqa: E731
    batch_logits, batch = model.run_with_cache(**inputs, kv_cache=caches[0], names_filter=resid)
    row_logits, row = model.run_with_cache(**alone, kv_cache=caches[1], names_filter=resid)
    assert _max(batch_logits[1, pads:], row_logits[0]) <= HAND_ATOL
    for name in row.keys():
        assert _max(batch[name][1, pads:], row[name][0]) <= HAND_ATOL, name
    for l, state in enumerate(caches[0].layers):
        if model.blocks[l].mixer_kind == "linear_attention":
            assert _max(state.recurrent[1:], caches[1].layers[l].recurrent) <= HAND_ATOL
            assert _max(state.conv[1:], caches[1].layers[l].conv) <= HAND_ATOL
    together = model.generate(**inputs, max_new_tokens=10, return_type="tokens")
    single = model.generate(**alone, max_new_tokens=10, return_type="tokens")
    assert torch.equal(together[1, -10:], single[0, -10:])


@functools.lru_cache(maxsize=None)
def _hf_generate(moe: bool):
    hf, _, inputs = built(moe)
    with torch.no_grad():
        return hf.generate(**inputs, max_new_tokens=10, do_sample=False)


@pytest.mark.parametrize("moe", [False, True])
def test_greedy_generate_without_the_kv_cache_equals_hf(moe):
    _, model, inputs = built(moe)
    ours = model.generate(**inputs, max_new_tokens=10, return_type="tokens", use_kv_cache=False)
    assert torch.equal(ours, _hf_generate(moe))


def test_vision_layers_and_merger_match_hf():
    hf, model, inputs = built()
    with torch.no_grad():
        ref = hf.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"], output_hidden_states=True)
        _, cache = model.run_with_cache(**inputs, names_filter=lambda n: n.startswith(("vision.", "projector.")))
    n_layers = model.cfg.vision.tower.n_layers
    assert len(ref.hidden_states) == n_layers + 1 and model.cfg.text.deepstack_layers == 0
    assert _max(ref.hidden_states[0], cache["vision.hook_embed"][0]) <= ATOL
    for layer in range(n_layers):
        assert _max(ref.hidden_states[layer + 1], cache[f"vision.blocks.{layer}.hook_resid_post"][0]) <= ATOL
    assert _max(ref.pooler_output, cache["projector.hook_out"][0]) <= ATOL


def test_gate_and_partial_rotary_are_hfs():
    """hook_gate is HF's gate half of q_proj (per head, after the q half); rotating only the first rotary_dim channels
    equals HF's apply_rotary_pos_emb."""
    from transformers.models.qwen3_5.modeling_qwen3_5 import apply_rotary_pos_emb

    from hooked_vlm.components.rope import apply_rotary

    hf, model, inputs = built()
    attn = model.blocks[1].attn
    x = torch.randn(2, 5, model.cfg.d_model)
    q_hf, gate_hf = torch.chunk(hf.model.language_model.layers[1].self_attn.q_proj(x).view(2, 5, -1, 64), 2, dim=-1)
    assert torch.equal(attn.W_Q, attn.q_proj.weight.view(4, 64, 32)[:, :32].transpose(1, 2))
    assert _max(torch.einsum("bpd,hde->bphe", x, attn.W_Q), q_hf) <= 1e-6
    assert model.cfg.text.rotary_dim == 8 and model.cfg.text.d_head == 32
    q = torch.randn(2, 5, 4, 32)
    cos, sin = torch.randn(2, 5, 1, 8), torch.randn(2, 5, 1, 8)
    ref, _ = apply_rotary_pos_emb(q.transpose(1, 2), q.transpose(1, 2), cos[:, :, 0], sin[:, :, 0])
    assert _max(apply_rotary(q, cos, sin), ref.transpose(1, 2)) <= 1e-6
    assert torch.equal(apply_rotary(q, cos, sin)[..., 8:], q[..., 8:])
    seen, hooks = _capture(["blocks.1.attn.hook_gate"])
    closed = model.run_with_hooks(**inputs, fwd_hooks=hooks + [("blocks.1.attn.hook_gate", lambda t, hook: t - 1e4)])
    assert seen["blocks.1.attn.hook_gate"].shape == (2, inputs["input_ids"].shape[1], 4, 32)
    # a closed gate (sigmoid -> 0) removes the layer's attention output: equal to zeroing hook_z
    zeroed = model.run_with_hooks(**inputs, fwd_hooks=[("blocks.1.attn.hook_z", lambda t, hook: t * 0)])
    assert _max(closed, zeroed) <= HAND_ATOL


def test_recurrent_state_does_not_grow_with_the_tokens():
    _, model, inputs = built()
    cache = KVCache(model.cfg)
    model(**inputs, kv_cache=cache)
    linear = [s for s, kind in zip(cache.layers, cache.kinds) if kind == "linear_attention"]
    before = [s.nbytes() for s in linear]
    la = model.cfg.text.linear_attention
    assert linear[0].recurrent.shape == (2, la.n_value_heads, la.d_key, la.d_value)
    assert linear[0].conv.shape == (2, la.conv_dim, la.conv_kernel - 1)
    mask = inputs["attention_mask"]
    for step in range(3):
        mask = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], 1)
        model(input_ids=torch.tensor([[4], [9]]), attention_mask=mask, kv_cache=cache)
    assert [s.nbytes() for s in linear] == before and cache.length == mask.shape[1]
    attention = [s for s, kind in zip(cache.layers, cache.kinds) if kind == "full_attention"]
    assert attention[0].length == mask.shape[1]  # keys and values grow; the recurrent state does not


def test_the_cache_object_refuses_a_cache_of_other_layer_kinds():
    _, model, inputs = built()
    with pytest.raises(ValueError, match=r"linear_attention.*KVCache\(model.cfg\)"):
        model(**inputs, kv_cache=KVCache(model.cfg.n_layers))
    with pytest.raises(TypeError, match="KVCache takes the model's config"):
        KVCache("four")


def test_stacked_attention_weights_name_the_linear_layers():
    _, model, _ = built()
    with pytest.raises(ValueError, match="linear_attention"):
        model.W_Q  # noqa: B018
    assert model.blocks[1].attn.W_Q.shape == (4, 32, 32)


def test_mtp_tensors_are_ignored_by_name_and_listed_by_inspect(tmp_path):
    """The hub checkpoints hold the multi-token-prediction head (mtp.*), which HF's forward never runs: loading
    ignores those tensors by name (the logits are unchanged) and ``inspect`` lists them with the reason; a tensor of
    any other unknown name still refuses the load. inspect also reports the recurrent state per sequence."""
    import shutil

    from safetensors.torch import load_file, save_file

    from hooked_vlm import HookedVLM
    from hooked_vlm.inspect import inspect_checkpoint
    from hooked_vlm.memory import recurrent_state_bytes

    b = tq.qwen35()
    folder = tmp_path / "with_mtp"
    shutil.copytree(b.folder, folder)
    weights = load_file(str(folder / "model.safetensors"))
    mtp = {"mtp.fc.weight": torch.randn(32, 64), "mtp.norm.weight": torch.randn(32),
           "mtp.layers.0.self_attn.q_proj.weight": torch.randn(256, 32)}
    save_file({**weights, **mtp}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    model = HookedVLM.from_pretrained(str(folder))
    assert _max(model(**b.inputs), b.model(**b.inputs)) == 0.0
    report = inspect_checkpoint(str(folder))
    assert report.loadable and sorted(k for k, _ in report.mapping.ignored) == sorted(mtp)
    text = report.format()
    assert "ignored 3 tensors (mtp." in text and "multi-token-prediction head" in text
    la = model.cfg.text.linear_attention
    per_layer_fp32 = (la.conv_dim * (la.conv_kernel - 1) + la.n_value_heads * la.d_key * la.d_value) * 4
    assert report.recurrent_state_bytes["float32"] == 3 * per_layer_fp32 == recurrent_state_bytes(model.cfg.text, 4)
    assert "recurrent state per sequence (3 linear-attention layers; constant" in text
    assert "4 layers (3 linear_attention, 1 full_attention)" in text
    save_file({**weights, "extra.head.weight": torch.randn(3)}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="extra.head.weight"):
        HookedVLM.from_pretrained(str(folder))


def test_converter_refuses_what_it_does_not_implement():
    from converters import get_converter
    from converters.base import UnsupportedConfigError

    conv = get_converter("Qwen3_5ForConditionalGeneration")
    with pytest.raises(UnsupportedConfigError, match="deepstack_visual_indexes=\\[0\\].*no DeepStack"):
        conv.make_config(tq.hf_config(vision=tq.vision_config(deepstack_visual_indexes=[0])))
    with pytest.raises(UnsupportedConfigError, match="attn_output_gate=False"):
        conv.make_config(tq.hf_config(text=tq.text_config(attn_output_gate=False)))
    with pytest.raises(UnsupportedConfigError, match="mrope_section"):
        conv.make_config(tq.hf_config(text=tq.text_config(rope_parameters={
            "rope_type": "default", "rope_theta": 1e4, "mrope_section": [4, 2, 2], "partial_rotary_factor": 0.25})))


def test_a_layer_kind_without_a_mixer_class_is_refused_by_name(monkeypatch):
    """Every LAYER_TYPES kind has a class now; a kind whose class is unregistered (here: sliding_attention, taken out
    of the registry for the test) is refused by name when its block is built."""
    from hooked_vlm.components import mixers
    from hooked_vlm.components.block import TransformerBlock
    from hooked_vlm.components.mixers import MixerNotRegisteredError
    from hooked_vlm.config import LAYER_TYPES, TowerConfig

    assert sorted(mixers.MIXERS) == sorted(LAYER_TYPES)
    monkeypatch.delitem(mixers.MIXERS, "sliding_attention")
    cfg = TowerConfig(n_layers=2, d_model=8, n_heads=2, d_mlp=16, sliding_window=4,
                      layer_types=("full_attention", "sliding_attention"))
    TransformerBlock(cfg, 0)
    with pytest.raises(MixerNotRegisteredError, match="'sliding_attention' has no registered token mixer"):
        TransformerBlock(cfg, 1)
    with pytest.raises(ValueError, match="chunked_attention layers but attention_chunk_size is None"):
        TowerConfig(n_layers=1, d_model=8, n_heads=2, d_mlp=16, layer_types=("chunked_attention",))
    with pytest.raises(ValueError, match="linear_attention layers but linear_attention is None"):
        TowerConfig(n_layers=1, d_model=8, n_heads=2, d_mlp=16, layer_types=("linear_attention",))


def test_per_expert_checkpoint_tensors_fill_the_fused_experts_exactly(tmp_path):
    """The MoE checkpoint (save_pretrained) holds one tensor per expert; they fill our fused gate_up_proj / down_proj
    slice by slice (= HF's fused parameters); one slice missing refuses the load, naming the parameter."""
    import shutil

    from safetensors.torch import load_file, save_file

    from hooked_vlm import HookedVLM

    b = tq.qwen35(moe=True)
    saved = load_file(str(b.folder / "model.safetensors"))
    assert "model.language_model.layers.0.mlp.experts.1.up_proj.weight" in saved
    hf_experts = b.hf.model.language_model.layers[2].mlp.experts
    assert torch.equal(b.model.blocks[2].mlp.gate_up_proj, hf_experts.gate_up_proj)
    assert torch.equal(b.model.blocks[2].mlp.down_proj, hf_experts.down_proj)
    folder = tmp_path / "one_missing"
    shutil.copytree(b.folder, folder)
    del saved["model.language_model.layers.0.mlp.experts.1.up_proj.weight"]
    save_file(saved, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="got no tensor.*blocks.0.mlp.gate_up_proj"):
        HookedVLM.from_pretrained(str(folder))
