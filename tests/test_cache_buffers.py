"""run_with_cache reuses the last cache's attention tensors only when nobody holds them, and never changes a value."""

from __future__ import annotations

import pytest
import torch

from hooked_vlm import HookedVLM
from hooked_vlm.analysis import collate
from hooked_vlm.toy.data import make_scenes, prompt

PATTERN, SCORES = "blocks.1.attn.hook_pattern", "blocks.1.attn.hook_attn_scores"


@pytest.fixture(scope="module")
def model():
    return HookedVLM.from_pretrained("toy-llava")


def _inputs(model, seed: int, kinds=("colour",)):
    scenes = make_scenes(len(kinds), seed=seed)
    return collate(model, [model.prepare_inputs(images=s.pil(), text=prompt(k)) for s, k in zip(scenes, kinds)])


def _previous_attention(cache, layer: int, scale: float, n_rep: int):
    """The explicit path as it was before buffer reuse: scores, then softmax with dead rows set to 0."""
    a = f"blocks.{layer}.attn."
    q, k = cache[a + "hook_rot_q"].transpose(1, 2), cache[a + "hook_rot_k"].transpose(1, 2)
    if n_rep > 1:
        k = k.repeat_interleave(n_rep, dim=1)
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(scale).masked_fill_(~cache[a + "hook_mask"], float("-inf"))
    pattern = torch.softmax(scores, dim=-1, dtype=torch.float32)
    dead = scores.amax(-1, keepdim=True) == float("-inf")
    return scores, pattern.masked_fill(dead, 0.0)


def test_reused_buffers_give_the_values_of_fresh_ones_and_of_the_previous_code(model):
    model.free_cache_buffers()
    inputs = _inputs(model, 0, ("colour", "shape"))  # two lengths: left padding gives dead query rows
    with torch.no_grad():
        _, fresh = model.run_with_cache(**inputs)
        fresh = {n: t.clone() for n, t in fresh.items()}  # clones: the cache itself is dropped, its buffers free
        n = sum(name.endswith(("hook_attn_scores", "hook_pattern")) for name in fresh)  # LM and vision tower
        assert model._cache_buffers().reused == 0 and len(model._cache_buffers()) == n >= 2 * model.cfg.n_layers
        _, again = model.run_with_cache(**inputs)
    assert model._cache_buffers().reused == n  # every layer's scores and pattern reused
    assert set(again.keys()) == set(fresh)
    for name, t in fresh.items():  # exact: the same kernels write into reused memory
        assert torch.equal(again[name], t), name
    attn = model.blocks[0].attn
    n_rep = model.cfg.text.n_heads // model.cfg.text.n_key_value_heads
    for layer in range(model.cfg.n_layers):
        scores, pattern = _previous_attention(again, layer, attn.scale, n_rep)
        assert torch.equal(again[f"blocks.{layer}.attn.hook_attn_scores"], scores)
        assert torch.equal(again[f"blocks.{layer}.attn.hook_pattern"], pattern)
    dead = ~again["blocks.0.attn.hook_mask"].any(-1)  # [batch, 1, q]: padded queries
    assert bool(dead.any()) and again[PATTERN].masked_select(dead[..., None]).abs().max().item() == 0.0
    rows = again[PATTERN].sum(-1)[~dead.expand(-1, again[PATTERN].shape[1], -1)]
    assert (rows - 1).abs().max().item() <= 1e-5  # live rows are distributions (float32 sums)


def test_a_held_cache_or_view_is_never_overwritten(model):
    a_inputs, b_inputs = _inputs(model, 1), _inputs(model, 2)
    with torch.no_grad():
        _, held = model.run_with_cache(**a_inputs)
        before = held[PATTERN].clone()
        model.run_with_cache(**b_inputs)  # different pixels: different patterns
        assert model._cache_buffers().reused == 0
        assert torch.equal(held[PATTERN], before)
        del held
        _, a = model.run_with_cache(**a_inputs)
        n = sum(name.endswith(("hook_attn_scores", "hook_pattern")) for name in a)
        view = a[SCORES][0]  # a view keeps the layer-1 scores' memory alive after the cache is dropped
        view_before = view.clone()
        del a
        _, b = model.run_with_cache(**b_inputs)
        assert model._cache_buffers().reused == n - 1  # all but the viewed tensor
        assert not torch.equal(b[PATTERN], before)
    assert torch.equal(view, view_before)
    stash = []  # a hook of the user's on a reusable hook point may hold the activation: not kept for reuse
    with torch.no_grad(), model.hooks(fwd_hooks=[(PATTERN, lambda t, hook: stash.append(t))]):
        model.run_with_cache(**a_inputs)
    assert PATTERN not in model._cache_buffers()._store and torch.equal(stash[0], before)
    with torch.no_grad():
        model.run_with_cache(**b_inputs)
    assert torch.equal(stash[0], before)
    model.free_cache_buffers()
    assert len(model._cache_buffers()) == 0
