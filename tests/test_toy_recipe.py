"""The LLaVA-way toy recipe (hooked_vlm.toy.recipe_llava) with tiny step counts: each stage trains
exactly what it should (text: the LM only; align: the projector only; instruct: projector + LM, the
tower never) and a rerun with the same seed gives bitwise the same weights. No checkpoint is written
or read except a tmp folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hooked_vlm.toy import recipe_llava as R
from hooked_vlm.toy.data import make_scenes

TINY = dict(R.DEFAULTS, vision_steps=2, vision_batch=4, text_steps=3, text_batch=10, align_steps=3, align_batch_scenes=4,
            steps=3, batch_scenes=2, warmup=1, lm_hidden=32, vision_hidden=32, held_out_n=8)
PARTS = ("model.vision_tower.", "model.multi_modal_projector.", "model.language_model.", "lm_head.")


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed_parts(before: dict, after: dict) -> set[str]:
    """The parts of the model (PARTS) holding at least one tensor that changed."""
    out = set()
    for k in before:
        if not torch.equal(before[k], after[k]):
            out |= {p for p in PARTS if k.startswith(p)}
    return out


@pytest.fixture(scope="module")
def staged():
    """Model and processor after each stage, run by hand with the recipe's own stage functions."""
    torch.set_num_threads(1)  # as train(threads=1) below: float sums depend on the thread count
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    processor = R.build_processor()
    model = R.build_model(TINY, processor.tokenizer)
    snaps = {"init": snapshot(model)}
    R.pretrain_vision(model, TINY, rng)
    snaps["vision"] = snapshot(model)
    for name, stage in (("text", R.pretrain_text), ("align", R.align_projector), ("instruct", R.instruct)):
        stage(model, processor, TINY, rng)
        snaps[name] = snapshot(model)
    return snaps


def test_stage_semantics(staged):
    assert changed_parts(staged["init"], staged["vision"]) == {"model.vision_tower."}
    assert changed_parts(staged["vision"], staged["text"]) == {"model.language_model.", "lm_head."}
    assert changed_parts(staged["text"], staged["align"]) == {"model.multi_modal_projector."}
    assert changed_parts(staged["align"], staged["instruct"]) == {"model.multi_modal_projector.", "model.language_model.", "lm_head."}


def test_text_batch_has_no_image_and_asks_about_the_caption():
    processor = R.build_processor()
    tok = processor.tokenizer
    scene = make_scenes(1, 3)[0]
    b = R.text_batch(tok, [scene])
    assert b["input_ids"].shape[0] == len(R.TEXT_KINDS)
    assert not (b["input_ids"] == tok.convert_tokens_to_ids("<image>")).any()
    texts = tok.batch_decode(b["input_ids"], skip_special_tokens=True)
    caption = scene.answer("caption")
    assert texts[0].strip() == caption
    assert texts[R.TEXT_KINDS.index("colour")].split()[-1] == scene.objects[0].colour
    assert all(caption in t for t in texts)


def test_train_reruns_the_stages_bitwise_and_tower_from_copies_the_tower(staged, tmp_path):
    """``train`` from the same seed = the stages run by hand above (a rerun: bitwise the same weights)."""
    torch.manual_seed(999)  # conftest seeds torch with 0 before each test; train() must seed itself
    model, _, info = R.train(TINY, tmp_path / "a", threads=1)
    state = model.state_dict()
    assert state.keys() == staged["instruct"].keys()
    assert all(torch.equal(state[k], staged["instruct"][k]) for k in state)
    assert (tmp_path / "a" / "model.safetensors").exists() and info["recipe"] == "llava"
    assert set(info["stage_seconds"]) == {"vision", "text", "align", "instruct"}
    # --tower-from: a second model (another seed, no vision stage) gets exactly the saved tower
    other, _, info = R.train(dict(TINY, vision_steps=0, text_steps=0, align_steps=0, steps=1, seed=1,
                                  tower_from=str(tmp_path / "a")), None, threads=1)
    t1, t2 = model.model.vision_tower.state_dict(), other.model.vision_tower.state_dict()
    assert all(torch.equal(t1[k], t2[k]) for k in t1)
    assert info["vision_probe_held_out"] == {"tower_from": str(tmp_path / "a")}
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        R.load_tower(other, tmp_path)
