"""The gate experiment (hooked_vlm.toy.gate_experiment): the objective switch of the native toy's training
really changes what is trained on, and the smoke mode runs end to end with the expected structure."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hooked_vlm.toy.data import GRID, make_scene
from hooked_vlm.toy.gate_experiment import OBJECTIVES, SCALARS, SMOKE, main
from hooked_vlm.toy.tasks import ToyEncoder
from hooked_vlm.toy.train_native import (BOI, DEFAULTS, EOI, build_model, build_processor, caption_image_rows,
                                         generation_mask, lm_step_loss)

KINDS = DEFAULTS["kinds"].split(",")


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    opts = dict(DEFAULTS, **SMOKE)
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


def test_smoke_end_to_end(tmp_path):
    kept = tmp_path / "kept"
    report = main(["--smoke", "--seeds", "0,1", "--out", str(tmp_path), "--keep", str(kept)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["smoke"] and saved["seeds"] == [0, 1] and saved["options"]["lm_layers"] >= 4
    assert set(saved["results"]) == set(OBJECTIVES) == set(report["results"])
    for objective, by_seed in saved["results"].items():
        assert set(by_seed) == {"0", "1"}
        for r in by_seed.values():
            assert all(0.0 <= r[c] <= 100.0 for c in SCALARS), r
            assert len(r["eoi attention share"]) == len(r["eoi patching flip"]) == saved["options"]["lm_layers"]
            assert all(0.0 <= x <= 1.0 for x in r["eoi attention share"] + r["eoi patching flip"]), r
            for where in ("eoi", "image_mean"):
                assert len(r[f"{where} lens"]) == len(r[f"{where} overlap"]) == saved["options"]["lm_layers"]
                assert all(0.0 <= x <= 100.0 for x in r[f"{where} lens"]), r
                assert all(0.0 <= x <= 1.0 for x in r[f"{where} overlap"]), r
    assert (tmp_path / "gate_experiment.png").stat().st_size > 20_000  # the three-panel figure
    table = (tmp_path / "table.md").read_text()
    assert table.count("| mean ± sd |") == 2 and all(f"| {o} | 1 |" in table for o in OBJECTIVES)
    assert all(f"| {o} | {l} |" in table for o in OBJECTIVES for l in range(saved["options"]["lm_layers"]))
    # --from measures the kept checkpoints again without training: the same numbers
    again = main(["--smoke", "--seeds", "0,1", "--from", str(kept)])
    drop = lambda r: {k: v for k, v in r.items() if k != "total_seconds"}
    assert {o: {s: drop(r) for s, r in by.items()} for o, by in again["results"].items()} == \
        {o: {s: drop(r) for s, r in by.items()} for o, by in report["results"].items()}
    with pytest.raises(FileNotFoundError, match="no trained checkpoint"):
        main(["--smoke", "--seeds", "5", "--from", str(kept)])


def test_ug_recipe_reruns_bitwise():
    """The U+G recipe (toy-chameleon-gen's): two runs from one seed give bitwise the same weights (VQ, codebook, LM),
    another seed does not (so the comparison sees the training)."""
    from hooked_vlm.toy.train_native import train

    opts = dict(DEFAULTS, **dict(SMOKE, steps=3), objective="ug")
    states = []
    for seed in (0, 0, 1):
        torch.manual_seed(999 + len(states))  # train() must seed itself
        model, _, _ = train(dict(opts, seed=seed), None, threads=1, held_out_n=8)
        states.append(model.state_dict())
    a, b, c = states
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
