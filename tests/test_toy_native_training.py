"""The native toy's training objectives (hooked_vlm.toy.train_native): the switch between ``u`` (understanding) and
``ug`` (+ image generation) really changes what is trained on, and the U+G recipe (toy-chameleon-gen's) reruns
bitwise. The gate experiment that compares the two objectives is tests/test_gate_experiment.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hooked_vlm.toy.data import GRID, make_scene
from hooked_vlm.toy.tasks import ToyEncoder
from hooked_vlm.toy.train_native import (BOI, DEFAULTS, EOI, OBJECTIVES, build_model, build_processor,
                                         caption_image_rows, generation_mask, lm_step_loss)

KINDS = DEFAULTS["kinds"].split(",")
# tiny options, end to end in seconds (the same as the gate experiment's --smoke)
TINY = dict(vq_steps=3, vq_batch=4, kmeans_scenes=40, n_codes=32, steps=1, batch_scenes=2, warmup=1, lm_layers=4, lm_hidden=32)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    opts = dict(DEFAULTS, **TINY)
    processor = build_processor(opts["n_codes"])
    model = build_model(opts, processor.tokenizer).eval()
    rng = np.random.default_rng(0)
    batch = ToyEncoder(processor).batch([make_scene(rng) for _ in range(3)], tuple(KINDS))
    return model, batch


def test_objective_switch_changes_the_loss_mask(setup):
    model, batch = setup
    cfg = model.config
    image_id, eoi_id = cfg.image_token_id, cfg.vocabulary_map[EOI]
    ids = batch["input_ids"]
    assert not generation_mask(ids, image_id, eoi_id, "u").any()
    gen = generation_mask(ids, image_id, eoi_id, "ug")
    # every question row: BOI and each code predict the next code or EOI (36 codes + EOI = 37), nothing else
    assert gen.sum(1).tolist() == [GRID * GRID + 1] * len(ids)
    nxt = torch.roll(ids, -1, 1)[gen]
    assert ((nxt == image_id) | (nxt == eoi_id)).all() and not batch["answer_mask"][gen].any()
    with pytest.raises(ValueError, match="objective must be one of"):
        generation_mask(ids, image_id, eoi_id, "gen")


def test_caption_to_image_rows(setup):
    model, batch = setup
    cfg = model.config
    special = dict(bos=cfg.bos_token_id, boi=cfg.vocabulary_map[BOI], image=cfg.image_token_id,
                   eoi=cfg.vocabulary_map[EOI], pad=cfg.pad_token_id)
    rows, mask = caption_image_rows(batch, KINDS.index("caption"), GRID * GRID, special)
    assert rows.shape[0] == 3 and (rows[:, 0] == special["bos"]).all()
    for r in range(3):
        row = rows[r][mask[r].bool()].tolist()
        q = [i for i in range(len(batch["kind"])) if batch["kind"][i] == KINDS.index("caption")][r]
        caption = batch["targets"][q][batch["answer_mask"][q]].tolist()[:-1]
        assert row == [special["bos"]] + caption + [special["boi"]] + [special["image"]] * GRID * GRID + [special["eoi"]]


def test_objective_switch_changes_the_loss(setup):
    """'u' ignores gen_weight (no generation term); 'ug' adds a positive term that scales with it."""
    model, batch = setup
    cap = KINDS.index("caption")
    with torch.no_grad():
        loss = {(o, w): float(lm_step_loss(model, batch, len(KINDS), 0.0, o, w, cap)) for o in OBJECTIVES for w in (1.0, 2.0)}
    assert abs(loss["u", 1.0] - loss["u", 2.0]) <= 1e-6, loss
    gen1, gen2 = loss["ug", 1.0] - loss["u", 1.0], loss["ug", 2.0] - loss["u", 1.0]
    assert gen1 >= 1.0, loss  # an untrained model's next-code loss is ~log(vocab) >> 0
    assert abs(gen2 - 2 * gen1) <= 1e-4 * abs(gen2), loss


def test_ug_recipe_reruns_bitwise():
    """The U+G recipe (toy-chameleon-gen's): two runs from one seed give bitwise the same weights (VQ, codebook, LM),
    another seed does not (so the comparison sees the training)."""
    from hooked_vlm.toy.train_native import train

    opts = dict(DEFAULTS, **dict(TINY, steps=3), objective="ug")
    states = []
    for seed in (0, 0, 1):
        torch.manual_seed(999 + len(states))  # train() must seed itself
        model, _, _ = train(dict(opts, seed=seed), None, threads=1, held_out_n=8)
        states.append(model.state_dict())
    a, b, c = states
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
