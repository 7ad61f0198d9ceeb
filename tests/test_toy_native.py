"""The shipped toy native model (toy-chameleon): it loads through the Chameleon converter, matches HF,
answers held-out questions, and shows what the Narrow Gate analyses measured on it. Nothing is trained here.

The measured numbers (see hooked_vlm/toy/checkpoints/toy-chameleon/toy_training.json and
docs/toy_models.md) hold with the margins below; the main finding is that this small native model has
NO narrow gate: text reads the object's codes directly, and knocking out the end-of-image token
changes nothing while knocking out the image codes removes the colour.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hooked_vlm.toy import toy_checkpoint_path
from hooked_vlm.toy.data import COLOURS, GRID, make_scene, make_scenes, prompt
from hooked_vlm.demo.gate_effects import code_replacement, eoi_logit_lens, gate_knockout
from hooked_vlm.toy.tasks import ToyEncoder, accuracy, hooked_logits_fn

FOLDER = toy_checkpoint_path("toy-chameleon")
INFO = json.loads((FOLDER / "toy_training.json").read_text()) if FOLDER is not None else {}

# Asserted floors: measured values (toy_training.json / docs/toy_models.md) minus a few points.
MIN_ACCURACY = {"colour": 95.0, "position": 95.0, "shape": 58.0}  # measured 99.9 / 99.9 / 64.8
GATE_MARGIN = 60.0  # colour points: image-code knockout (all layers) hurts this much more than EOI knockout
EOI_DROP_MAX = 3.0  # EOI knockout (all layers) costs at most this many colour points
REPLACE_MARGIN = 60.0  # colour points: object codes -> background code vs random cells -> background code


@pytest.fixture(scope="module")
def model():
    from hooked_vlm import HookedVLM

    assert FOLDER is not None, "the toy checkpoint is not shipped in hooked_vlm/toy/checkpoints/toy-chameleon"
    return HookedVLM.from_pretrained("toy-chameleon")


def test_loads_as_native_chameleon(model):
    assert model.cfg.architecture == "ChameleonForConditionalGeneration" and model.cfg.native_multimodal
    assert model.cfg.vision.downsample * GRID == 48
    assert type(model.processor).__name__ == "ChameleonProcessor"
    assert sum(f.stat().st_size for f in FOLDER.iterdir()) < 4_000_000  # a few MB at most


def test_shipped_checkpoint_matches_hf(model):
    """Same logits as HF (fp32, 1e-4 absolute) on 4 scenes x 4 question kinds, right-padded."""
    from transformers import ChameleonForConditionalGeneration

    hf = ChameleonForConditionalGeneration.from_pretrained(str(FOLDER)).eval()
    b = ToyEncoder(model.processor).batch(make_scenes(4, 5))
    inputs = dict(input_ids=b["input_ids"], pixel_values=b["pixel_values"], attention_mask=b["attention_mask"])
    with torch.no_grad():
        ref, ours = hf(**inputs).logits, model(**inputs)
    real = b["attention_mask"].bool()
    text_ids = [i for i in range(ref.shape[-1]) if i not in set(model.cfg.extra["image_code_ids"])]
    assert abs(ref[real][:, text_ids] - ours[real][:, text_ids]).max().item() <= 1e-4
    assert (ours[real][:, model.cfg.extra["image_code_ids"]] <= torch.finfo(ours.dtype).min / 2).all()  # codes suppressed as HF


def test_processor_pixels_spans_and_generation(model):
    from hooked_vlm.analysis import spans_of

    enc = ToyEncoder(model.processor)
    scene = make_scene(np.random.default_rng(3), colour="red", shape="square")
    inputs = model.prepare_inputs(images=scene.pil(), text=prompt("colour"))
    assert inputs["input_ids"][0].tolist() == enc.prompt_ids("colour")
    assert abs(inputs["pixel_values"] - enc.batch([scene], ("colour",))["pixel_values"]).max().item() <= 1e-6
    spans = spans_of(model, inputs)
    image = spans.positions("image", 0)
    assert len(image) == GRID * GRID and spans.positions("boi", 0).item() == image[0] - 1
    assert spans.positions("eoi", 0).item() == image[-1] + 1
    assert model.generate(**inputs, max_new_tokens=3)[0].strip() == "red"


def test_held_out_accuracy(model):
    """Measured on the model, on the first 150 of the 1,000 held-out scenes that toy_training.json reports on
    (measured 99.3 / 100 / 61.3); the shipped claim must hold there: no more errors than it claims on all 1,000."""
    from hooked_vlm.toy.train import HELD_OUT_SEED

    n = 150
    acc = accuracy(hooked_logits_fn(model), ToyEncoder(model.processor), make_scenes(n, HELD_OUT_SEED),
                   tuple(MIN_ACCURACY))  # make_scenes(150, seed) == make_scenes(1000, seed)[:150]
    for kind, floor in MIN_ACCURACY.items():
        assert acc[kind] >= floor, acc
    assert INFO["held_out_seed"] == HELD_OUT_SEED and INFO["held_out_n"] == 1000, INFO
    for kind in MIN_ACCURACY:
        wrong_here = round(n * (100 - acc[kind]) / 100)
        wrong_claimed = round(INFO["held_out_n"] * (100 - INFO["held_out_accuracy"][kind]) / 100)
        assert wrong_here <= wrong_claimed, (kind, acc, INFO["held_out_accuracy"])


def test_tokenizer_codes_separate_colour_from_background(model):
    from hooked_vlm.toy.vq_fit import code_purity, encode

    scenes = make_scenes(200, 31)
    codes = encode(model.vision.vq, ToyEncoder(model.processor).pixel_values([s.image for s in scenes]))
    purity = code_purity(codes, scenes)
    assert purity["colour_purity"] >= 97.0 and purity["shared_with_background"] <= 2, purity


def test_no_narrow_gate_text_reads_the_codes(model):
    """Measured direction (all layers, -inf mask knockout, queries = text after the image): EOI -> text
    costs nothing, image codes -> text removes the colour, random controls cost (almost) nothing."""
    n = model.cfg.n_layers
    every = gate_knockout(model, n=100, windows=[list(range(n))])[f"layers {','.join(map(str, range(n)))}"]
    assert every["base"] - every["eoi"] <= EOI_DROP_MAX, every
    assert every["eoi"] - every["image codes"] >= GATE_MARGIN, every
    assert every["image codes"] <= 40.0, every  # 6 colours: chance is ~17%
    assert every["base"] - every["random code"] <= EOI_DROP_MAX, every


def test_object_codes_carry_the_colour(model):
    res = code_replacement(model, n=100, kinds=("colour",))["colour"]
    assert (res["base"] - res["object"]) - (res["base"] - res["random"]) >= REPLACE_MARGIN, res


def test_eoi_logit_lens_names_the_colour(model):
    """EOI *carries* the colour after layer 0 (the logit lens there names it in 60% of 100 scenes, 19% at the
    LM input; chance 17%) even though no text needs it."""
    lens = eoi_logit_lens(model, n=100)
    assert lens["embed"] <= 30.0 and lens["block 0"] >= 50.0, lens


def test_colour_words_are_single_tokens(model):
    ids = [model.to_single_token(c) for c in COLOURS]
    assert len(set(ids)) == len(COLOURS) and not set(ids) & set(model.cfg.extra["image_code_ids"])
