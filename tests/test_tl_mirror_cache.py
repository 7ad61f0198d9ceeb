"""TransformerLens's own ActivationCache / run_with_cache tests as the spec, re-asked of HookedVLM.

On the shipped toys (toy-llava, one image; toy-chameleon, native VQ tokens) and the shared tiny LLaVA of
tests/tiny.py (two items holding one and two images, left padding). Each test names the TL test(s) it mirrors
(TransformerLens repo, tests/...::test). The exactness of TL's direct-logit-attribution recipes against TL itself is
tests/test_tl_* of the DLA work; here: the cache's structure and its helpers' internal identities, which must hold
whatever the weight processing. docs/tl_mirrored_tests.md lists every TL test mirrored and the ones that do not apply.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hooked_vlm.activation_cache import is_per_image, lm_pos_axis

# fp32 on 2-layer d_model=128 toys: sums of a few dozen terms of size <= ~20 agree to ~1e-5 (measured <= 4e-6)
SUM_TOL = 1e-4


@pytest.fixture(scope="module")
def toys():
    from hooked_vlm import HookedVLM
    from hooked_vlm.toy.data import make_scene, prompt

    scene = make_scene(np.random.default_rng(0))
    out = {}
    for name in ("toy-llava", "toy-chameleon"):
        model = HookedVLM.from_pretrained(name)
        out[name] = (model, model.prepare_inputs(images=scene.pil(), text=prompt("colour")))
    return out


@pytest.fixture(scope="module")
def llava(toys):
    model, inputs = toys["toy-llava"]
    return model, inputs, model.run_with_cache(**inputs)[1]


@pytest.fixture(scope="module")
def two_items():
    """The shared tiny LLaVA of tests/tiny.py: item 0 holds one image (4 left pads), item 1 two images."""
    from tests import tiny

    b = tiny.llava(text=tiny.llama_text_config(num_hidden_layers=2, num_key_value_heads=2),
                   vision=tiny.clip_vision_config(num_hidden_layers=2), images=(1, 2), pads=(4, 0))
    return b.model, b.inputs


def test_cache_keys_in_run_order(toys):
    """Mirrors tests/integration/test_cache_hook_names.py::test_cache_hook_names: the cache holds every hook point,
    keyed in the order they ran (vision tower, projector, image embeddings, then TL's LM names in TL's order)."""
    for model, inputs in toys.values():
        fired = []
        model.run_with_hooks(**inputs, fwd_hooks=[(lambda n: True, lambda t, hook: fired.append(hook.name))])
        _, cache = model.run_with_cache(**inputs)
        assert list(cache.keys()) == fired and set(fired) == set(model.hook_dict)
        tl_order = ["hook_embed", "blocks.0.hook_resid_pre", "blocks.0.ln1.hook_scale", "blocks.0.ln1.hook_normalized",
                    "blocks.0.attn.hook_q", "blocks.0.attn.hook_k", "blocks.0.attn.hook_v",
                    "blocks.0.attn.hook_attn_scores", "blocks.0.attn.hook_pattern", "blocks.0.attn.hook_z",
                    "blocks.0.hook_attn_out", "blocks.0.hook_resid_mid", "blocks.0.ln2.hook_scale",
                    "blocks.0.ln2.hook_normalized", "blocks.0.mlp.hook_pre", "blocks.0.mlp.hook_post",
                    "blocks.0.hook_mlp_out", "blocks.0.hook_resid_post", "ln_final.hook_scale",
                    "ln_final.hook_normalized"]
        assert [k for k in cache.keys() if k in tl_order] == tl_order


def test_run_with_cache_pos_slice(toys):
    """Mirrors tests/integration/test_cache_pos_slice.py::test_run_with_cache_pos_slice_keep_batch and
    ::test_run_with_cache_pos_slice_remove_batch: with pos_slice=i every LM entry is the full cache's position i (the
    query axis of scores/patterns), batch kept or removed. Failed before this branch: TL slices by name, so
    hook_image_embeds kept only the last image token, vision entries their last patch and hook_rot_q/k one head.
    Per-image entries (vision tower, projector, image embeddings) are kept whole: their positions are not the
    sequence's."""
    for model, inputs in toys.values():
        _, full = model.run_with_cache(**inputs)
        n = inputs["input_ids"].shape[1]
        for i, remove in ((0, False), (n // 2, True), (-1, False)):
            _, sliced = model.run_with_cache(**inputs, pos_slice=i, remove_batch_dim=remove)
            assert list(sliced.keys()) == list(full.keys())
            for name, value in full.items():
                axis = lm_pos_axis(name)
                want = value if axis is None else value.narrow(axis, i % n, 1)
                if remove and want.shape[0] == 1:
                    want = want[0]
                assert torch.equal(sliced[name], want), (name, i, remove)
            assert sliced["q", 0].shape == (() if remove else (1,)) + (1, model.cfg.n_heads, model.cfg.d_head)


def test_position_axis_rule_fits_every_lm_entry(toys, two_items):
    """Guards the rule behind pos_slice (hooked_vlm.activation_cache.lm_pos_axis) on three families: every LM entry
    has the sequence on that axis and the batch first; no per-image entry is mistaken for an LM one."""
    for model, inputs in [*toys.values(), two_items]:
        _, cache = model.run_with_cache(**inputs)
        b, n = inputs["input_ids"].shape
        for name, value in cache.items():
            if is_per_image(name):
                assert name.startswith(("vision.", "projector.")) or value.shape[0] != b or b == 1, name
                continue
            axis = lm_pos_axis(name)  # None: a recurrent state; every family: tests/test_hooks.py
            assert value.shape[0] == b and (axis is None or value.shape[axis] == n), (name, tuple(value.shape))


def test_remove_batch_dim(toys):
    """Mirrors tests/acceptance/test_activation_cache.py::test_remove_batch_dim: every entry loses its leading 1, a
    second call warns and changes nothing, and run_with_cache(remove_batch_dim=True) gives the same cache (failed
    before this branch under TL 3.9: an IndexError)."""
    model, inputs = toys["toy-llava"]
    _, cache = model.run_with_cache(**inputs)
    before = {k: v.shape for k, v in cache.items()}
    assert cache.has_batch_dim
    cache.remove_batch_dim()
    cache.remove_batch_dim()
    assert not cache.has_batch_dim
    assert all(cache[k].shape == (s[1:] if s[0] == 1 else s) for k, s in before.items())
    assert before["hook_image_embeds"] == cache["hook_image_embeds"].shape  # [n_image_tokens, d_model]: no batch
    _, direct = model.run_with_cache(**inputs, remove_batch_dim=True)
    assert all(torch.equal(direct[k], cache[k]) for k in cache.keys()) and not direct.has_batch_dim


def test_remove_batch_dim_fails_if_batch_gt_1(two_items):
    """Mirrors tests/acceptance/test_activation_cache.py::test_remove_batch_dim_fails_if_batch_gt_1, also for
    run_with_cache(remove_batch_dim=True) (failed before this branch: under TL 4 the cache kept its batch axis and
    said it had none; under TL 3.9 an IndexError)."""
    model, inputs = two_items
    _, cache = model.run_with_cache(**inputs)
    with pytest.raises(ValueError, match="2 items"):
        cache.remove_batch_dim()
    assert cache.has_batch_dim
    with pytest.raises(ValueError, match="one item"):
        model.run_with_cache(**inputs, remove_batch_dim=True)


def test_retrieve_activations_by_shorthand(llava):
    """Mirrors tests/acceptance/test_activation_cache.py::test_retrieve_activations: TL's shorthand keys
    (name, layer, kind; negative layers) reach the LM entries."""
    model, _, cache = llava
    last = model.cfg.n_layers - 1
    pairs = {("scale", -1, "ln1"): f"blocks.{last}.ln1.hook_scale", ("k", -1): f"blocks.{last}.attn.hook_k",
             ("resid_pre", 0): "blocks.0.hook_resid_pre", ("pattern", 1): "blocks.1.attn.hook_pattern",
             ("post", 0): "blocks.0.mlp.hook_post", "embed": "hook_embed", "scale": "ln_final.hook_scale",
             f"scale{last}ln1": f"blocks.{last}.ln1.hook_scale"}
    for short, name in pairs.items():
        assert cache[short] is cache[name], short


def test_keys_values_items_iter_len(llava):
    """Mirrors tests/acceptance/test_activation_cache.py::test_get_items, ::test_get_values and ::test_get_keys."""
    _, _, cache = llava
    assert list(cache.keys()) == list(cache.cache_dict.keys()) == list(cache)
    assert all(a is b for a, b in zip(cache.values(), cache.cache_dict.values()))
    assert all(k1 == k2 and v1 is v2 for (k1, v1), (k2, v2) in zip(cache.items(), cache.cache_dict.items()))
    assert len(cache) == len(cache.cache_dict)


def test_apply_slice_to_batch_dim(two_items):
    """Mirrors tests/acceptance/test_activation_cache.py::test_apply_slice_to_batch_dim, for a VLM batch: LM entries
    are sliced on the batch axis; vision, projector and image-embedding entries keep the images of the chosen items;
    cache.spans is sliced alike. Failed before this branch: TL guessed the batch size from the most common leading
    dim, sliced vision entries only when the image count happened to equal the batch size, left hook_image_embeds
    whole and dropped cache.spans."""
    model, inputs = two_items
    _, cache = model.run_with_cache(**inputs)
    spans = cache.spans
    per_item = [len(spans.layouts[b]) for b in range(2)]
    assert per_item == [1, 2]
    toks = [sum(lay.n_tokens for lay in spans.layouts[b]) for b in range(2)]
    for batch_slice, items in ((1, [1]), ([0], [0]), ((0, 2), [0, 1])):
        sub = cache.apply_slice_to_batch_dim(batch_slice)
        assert sub.has_batch_dim == (not isinstance(batch_slice, int))
        img = [i for b in items for i in range(sum(per_item[:b]), sum(per_item[:b + 1]))]
        tok = [t for b in items for t in range(sum(toks[:b]), sum(toks[:b + 1]))]
        for name, value in cache.items():
            if name.startswith(("vision.", "projector.")):
                want = value[img]
            elif name == "hook_image_embeds":
                want = value[tok]
            else:
                want = value[items[0]] if isinstance(batch_slice, int) else value[items]
            assert torch.equal(sub[name], want), (name, batch_slice)
        assert sub.spans.batch == len(items) and [len(x) for x in sub.spans.layouts] == [per_item[b] for b in items]
        for span in spans.names:
            assert torch.equal(sub.spans.mask(span), spans.mask(span)[items])
    # the image tokens of item 1 are its own: the sliced spans find them in the sliced cache
    sub = cache.apply_slice_to_batch_dim([1])
    assert torch.equal(sub["hook_embed"][0, sub.spans.positions("image", 0)], sub["hook_image_embeds"])


def test_toggle_autodiff(llava):
    """Mirrors tests/acceptance/test_activation_cache.py::test_toggle_autodiff."""
    _, _, cache = llava
    was = torch.is_grad_enabled()
    try:
        cache.toggle_autodiff(mode=False)
        assert not torch.is_grad_enabled()
        cache.toggle_autodiff(mode=True)
        assert torch.is_grad_enabled()
    finally:
        torch.set_grad_enabled(was)


def test_stack_activation(llava):
    """Mirrors tests/acceptance/test_activation_cache.py::test_stack_activation."""
    model, _, cache = llava
    stack = cache.stack_activation("scale", -1, "ln1")
    assert len(stack) == model.cfg.n_layers
    assert all(torch.equal(cache["scale", l, "ln1"], stack[l]) for l in range(model.cfg.n_layers))
    assert torch.equal(cache.stack_activation("resid_post", 1)[0], cache["resid_post", 0])


def test_cache_device_and_model_device(toys):
    """Mirrors tests/integration/model_bridge/test_bridge_run_with_cache_device.py
    ::test_run_with_cache_device_does_not_move_model, and ActivationCache.to (TL has no test of its own for it):
    run_with_cache(device=...) puts the entries there and leaves the model where it was ("meta" stands for a second
    device on a CPU-only machine)."""
    model, inputs = toys["toy-llava"]
    logits, cache = model.run_with_cache(**inputs, device="meta", names_filter=["hook_embed", "hook_image_embeds"])
    assert {v.device.type for v in cache.values()} == {"meta"} and logits.device.type == "cpu"
    assert model.device.type == "cpu" and all(p.device.type == "cpu" for p in model.parameters())
    _, cache = model.run_with_cache(**inputs, names_filter="hook_embed")
    assert cache.to("meta") is cache and cache["hook_embed"].device.type == "meta"


def test_cached_activations_are_detached_and_kept(toys):
    """Mirrors tests/integration/model_bridge/compatibility/test_bridge_cache_behavior.py
    ::test_cache_values_are_tensors and ::test_names_filter_returns_subset: entries are detached tensors, a filter
    gives exactly its names, and a later run does not overwrite an earlier cache (incremental caching)."""
    model, inputs = toys["toy-llava"]
    names = ["blocks.0.attn.hook_pattern", "vision.blocks.0.attn.hook_pattern", "hook_image_embeds"]
    _, first = model.run_with_cache(**inputs, names_filter=names)
    kept = {k: v.clone() for k, v in first.items()}
    assert list(first.keys()) == [names[1], names[2], names[0]]  # run order
    assert all(not v.requires_grad for v in first.values())
    model.run_with_cache(**dict(inputs, pixel_values=-inputs["pixel_values"]), names_filter=names)
    assert all(torch.equal(first[k], kept[k]) for k in names)


def test_incremental_forward_with_kv_cache(toys):
    """Mirrors tests/integration/test_kv_cache.py::test_single_new_token and ::test_multiple_new_tokens: running the
    prompt, then new tokens with a KV cache, gives the full forward's logits and residuals at the new positions (fp32:
    <= 1e-4, the parity bound)."""
    from hooked_vlm.kv_cache import KVCache

    model, inputs = toys["toy-llava"]
    ids, n = inputs["input_ids"], inputs["input_ids"].shape[1]
    new = torch.tensor([[5, 7, 9]])
    full_ids = torch.cat([ids, new], 1)
    full_logits, full = model.run_with_cache(input_ids=full_ids, pixel_values=inputs["pixel_values"],
                                             names_filter=lambda x: x.endswith("hook_resid_post"))
    kv = KVCache(model.cfg)
    model(**inputs, kv_cache=kv)
    logits, step = model.run_with_cache(input_ids=new, kv_cache=kv, spans=full.spans,
                                        names_filter=lambda x: x.endswith("hook_resid_post"))
    assert (logits - full_logits[:, n:]).abs().max().item() <= 1e-4
    for name in step.keys():
        assert (step[name] - full[name][:, n:]).abs().max().item() <= 1e-4, name
