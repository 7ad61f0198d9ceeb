"""Right-padded prompts in generate: new tokens follow each row's real tokens, exactly as from the left-padded
batch (LLaVA against HF's own generate; Qwen2-VL with M-RoPE and mm_token_type_ids; Chameleon), with and
without the KV cache."""

from __future__ import annotations

import functools

import pytest
import torch

from hooked_vlm import HookedVLM
from hooked_vlm.generation import is_left_padded, to_left_padding
from tests import tiny
from tests import tiny_native as tn
from tests import tiny_qwen_idefics as tqi

N_NEW = 8


def _right_padded(batch: dict) -> dict:
    """The same rows as a left-padded batch, padded on the right (per-position inputs moved along)."""
    mask = batch["attention_mask"]
    order = torch.sort(1 - mask, dim=1, stable=True).indices  # real tokens first, order kept
    out = dict(batch)
    for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
        if key in batch:
            out[key] = batch[key].gather(1, order)
    out["input_ids"] = out["input_ids"].masked_fill(out["attention_mask"] == 0, tiny.PAD)
    return out


@functools.lru_cache(maxsize=None)
def _case(name: str):
    """(hf model, our model, left-padded batch with rows of different lengths)."""
    if name == "llava":
        folder, hf = tiny.make_llava()
        batch = tiny.llava_batch(hf, [1, 2, 0], [4, 0, 1])
    elif name == "qwen2-vl":
        folder, hf = tqi.make_qwen("2")
        batch = tqi.qwen_batch([[(1, 4, 6)], [(1, 6, 4), (1, 8, 8)]], [4, 0])
    else:
        folder, hf = tn.make_chameleon()
        batch = tn.chameleon_batch(hf, [1, 2], [3, 0])
    return hf, HookedVLM.from_pretrained(str(folder), processor=None), batch


@pytest.mark.parametrize("use_kv_cache", [True, False])
@pytest.mark.parametrize("name", ["llava", "qwen2-vl", "chameleon"])
def test_right_padded_generation_equals_left_padded(name, use_kv_cache):
    hf, model, left = _case(name)
    right = _right_padded(left)
    assert not is_left_padded(right["attention_mask"]) and is_left_padded(left["attention_mask"])
    lengths = left["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) == len(lengths)  # rows of different lengths
    kwargs = dict(max_new_tokens=N_NEW, return_type="tokens", stop_at_eos=False, use_kv_cache=use_kv_cache)
    ours_left = model.generate(**left, **kwargs)
    ours_right = model.generate(**right, **kwargs)
    prompt = left["input_ids"].shape[1]
    # the whole output: the prompt in the left-padded layout, then the same new tokens for every row
    assert torch.equal(ours_right, ours_left)
    assert torch.equal(ours_right[:, :prompt], left["input_ids"])
    if name == "llava":  # and those are HF's own tokens from the left-padded batch (stopping at EOS as HF does)
        with torch.no_grad():
            ref = hf.generate(**left, max_new_tokens=N_NEW, do_sample=False)
        ours = model.generate(**right, max_new_tokens=N_NEW, return_type="tokens", use_kv_cache=use_kv_cache)
        assert torch.equal(ours, ref)


def test_generated_tokens_differ_by_row():
    """Guards the equality above against a degenerate model that emits one token whatever the input."""
    _, model, left = _case("llava")
    out = model.generate(**left, max_new_tokens=N_NEW, return_type="tokens", stop_at_eos=False)
    new = out[:, left["input_ids"].shape[1]:]
    assert len({tuple(r) for r in new.tolist()}) > 1 and len(set(new.flatten().tolist())) > 2


def test_to_left_padding_moves_per_position_inputs():
    tokens = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0], [0, 3, 4, 0]])  # right, right, both sides
    mask = (tokens != 0).long()
    types = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0]])
    new_tokens, new_mask, extras = to_left_padding(tokens, mask, {"mm_token_type_ids": types, "image_grid_thw": "kept"})
    assert new_tokens.tolist() == [[0, 5, 6, 7], [0, 0, 8, 9], [0, 0, 3, 4]]
    assert new_mask.tolist() == [[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1]]
    assert extras["mm_token_type_ids"].tolist() == [[0, 0, 1, 1], [0, 0, 1, 0], [0, 0, 1, 0]]
    assert extras["image_grid_thw"] == "kept"
    with pytest.raises(ValueError, match="mm_token_type_ids must be"):
        to_left_padding(tokens, mask, {"mm_token_type_ids": types[:, :2]})


def test_hooks_on_relaid_prompts_warn():
    _, model, left = _case("llava")
    right = _right_padded(left)
    with pytest.warns(UserWarning, match="re-lays them out left-padded"):
        model.generate(**right, max_new_tokens=2, return_type="tokens", fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: x)])


def test_logits_to_keep_unembeds_only_the_last_positions():
    """generate's prefill asks for the last position's logits only (as HF's generate): equal to the slice of the full
    logits, hooks still see every position, and bad values or a loss without every position's logits raise."""
    _, model, left = _case("llava")
    with torch.no_grad():
        full = model(**left)
        seen = {}

        def record(x, hook):
            seen["pos"] = x.shape[1]
            return x

        last = model.run_with_hooks(**left, logits_to_keep=1, fwd_hooks=[("ln_final.hook_normalized", record)])
        two = model(**left, logits_to_keep=2)
    assert last.shape == (full.shape[0], 1, full.shape[2]) and two.shape[1] == 2
    assert seen["pos"] == full.shape[1]
    # not bit-equal: a matmul over fewer rows may sum in another order (1e-5 in fp32 at this scale)
    assert (last - full[:, -1:]).abs().max() <= 1e-5 and (two - full[:, -2:]).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="logits_to_keep must be an int >= 0"):
        model(**left, logits_to_keep=-1)
    with pytest.raises(ValueError, match="needs the logits at every position"):
        model(**left, logits_to_keep=1, return_type="loss")
