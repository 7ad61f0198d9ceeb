"""Every position- or size-dependent refusal probed at its boundary: the last accepted value runs and equals HF,
the first refused value raises. (An off-by-one in a refusal -- ``>=`` for ``>``, ``max_pos + 1`` for ``max_pos``
-- fails here; the tests that probe far beyond the boundary would not see it.)

- dynamic-NTK RoPE (InternVL's Qwen2 LM, ``components/rope.py``): HF rescales its rotary table once a sequence
  reaches ``max_position_embeddings + 1`` positions; we compute the plain table, exact up to ``max_position_embeddings``
  positions, and refuse beyond -- in a forward and in generation (the step that needs position max_pos).
- Pixtral's packed images (``pipelines/pixtral.py``): an image's true size may fill the padded pixel batch exactly;
  one patch row or column more than the batch holds is refused.
"""

from __future__ import annotations

import pytest
import torch

from tests import tiny_internvl as ti
from tests import tiny_next_pixtral as tnp
from tests.tiny import max_abs_diff

ATOL = 1e-4


def _text_only(n: int, seed: int = 0) -> dict:
    ids = torch.randint(4, 90, (1, n), generator=torch.Generator().manual_seed(seed))
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids))


def test_dynamic_rope_runs_exactly_up_to_max_positions_and_refuses_one_more():
    b = ti.internvl("qwen2")
    max_pos = b.model.cfg.text.max_position_embeddings
    assert b.model.cfg.text.rope_parameters["rope_type"] == "dynamic" and max_pos == ti.MAX_POSITIONS
    at = _text_only(max_pos)  # positions 0 .. max_pos - 1: HF's table is not rescaled yet
    with torch.no_grad():
        assert max_abs_diff(b.hf(**at).logits, b.model(**at)) <= ATOL
    with pytest.raises(ValueError, match=rf"position {max_pos} is beyond max_position_embeddings={max_pos}"):
        b.model(**_text_only(max_pos + 1))


def test_dynamic_rope_generation_stops_at_the_first_refused_position():
    """A prompt of max_pos - 3 tokens (positions 0 .. max_pos - 4): new token k is predicted by the forward at
    position max_pos - 5 + k, so 4 new tokens need positions up to max_pos - 1 and equal HF's (its table is not
    rescaled yet); a 5th needs a forward at position max_pos and raises, with and without the KV cache."""
    b = ti.internvl("qwen2")
    max_pos = b.model.cfg.text.max_position_embeddings
    prompt = _text_only(max_pos - 3, seed=1)
    with torch.no_grad():
        ref = b.hf.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert ref.shape[1] == max_pos + 1  # the last token is never fed back
    for cache in (True, False):
        ours = b.model.generate(**prompt, max_new_tokens=4, return_type="tokens", use_kv_cache=cache)
        assert torch.equal(ours, ref), cache
        with pytest.raises(ValueError, match=rf"position {max_pos} is beyond"):
            b.model.generate(**prompt, max_new_tokens=5, return_type="tokens", use_kv_cache=cache)


def test_pixtral_image_may_fill_the_batch_exactly_but_not_one_patch_more():
    b = tnp.pixtral()
    inputs = b.inputs
    height, width = inputs["pixel_values"].shape[-2:]
    sizes = inputs["image_sizes"]
    assert int(sizes[:, 0].max()) == height and int(sizes[:, 1].max()) == width  # the parity batch is the boundary
    p = b.model.cfg.vision.patch_size
    for axis in (0, 1):
        grown = sizes.clone()
        i = int(sizes[:, axis].argmax())
        grown[i, axis] += p - 1  # the same patch grid (HF and we floor to whole patches): accepted
        with torch.no_grad():
            assert max_abs_diff(b.model(**{**inputs, "image_sizes": grown}), b.model(**inputs)) == 0.0
        grown[i, axis] += 1  # one patch row / column beyond the pixel batch
        with pytest.raises(ValueError, match="does not fit the pixel batch"):
            b.model(**{**inputs, "image_sizes": grown})
