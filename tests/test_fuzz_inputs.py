"""Property-based bad input: a random valid prompt (tests/fuzz_families.py) broken in one drawn way must raise
the library's ValueError naming what is wrong, never an IndexError / RuntimeError from inside torch.

Ways to break it (each guaranteed to make the input wrong, not merely unusual):
image tokens cut (one dropped, or the prompt truncated inside an image as ``max_length`` does, on
the right or the left), images without
placeholders, placeholders without images, one image too many or too few, a missing opening / closing image
marker (families that require them), an attention_mask of the wrong length, ids outside the vocabulary,
float input_ids, and per family: Qwen2-VL image_grid_thw that disagrees with pixel_values / the prompt /
the merge size, or mm_token_type_ids that disagree with input_ids; Pixtral / Emu3 image_sizes that disagree
with pixel_values.
"""

from __future__ import annotations

import os
import re

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests import fuzz_families as ff
from tests.fuzz_families import native_conv  # noqa: F401 (autouse fixture)

# derandomize: the same examples on every run; no shrinking (phases), so a failure is reported in seconds with
# its (unshrunk) inputs instead of minutes of shrinking tiny-model forwards on 2 busy cores.
SETTINGS = settings(max_examples=3, deadline=None, derandomize=True, database=None, phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
COUNT = r"the prompt holds \d+ image tokens but (the images give \d+ image embeddings|no pixel_values were given)"
COMMON = ["drop_image_token", "truncate", "truncate_left", "no_pixels", "pixels_without_placeholders", "extra_image", "missing_image",
          "mask_length", "out_of_vocab", "float_ids"]
SPECIFIC = {"llava": [], "pixtral": ["sizes_too_big", "sizes_count"],
            "qwen2": ["grid_odd", "grid_patches", "grid_rows", "grid_shape", "token_types"],
            "chameleon": ["drop_opening_marker", "drop_closing_marker"],
            "emu3": ["drop_opening_marker", "drop_closing_marker", "sizes_too_big", "sizes_count", "no_sizes"]}
OPENING = {"chameleon": "boi", "emu3": "image_wrapper"}


def _image_runs(row: list) -> list[tuple[int, int, int]]:
    """(image index, first, last) content position of each image of one item's tokens."""
    runs: dict[int, list[int]] = {}
    for p, (_, _, cell) in enumerate(row):
        if cell is not None:
            runs.setdefault(cell[0], []).append(p)
    return [(i, ps[0], ps[-1]) for i, ps in sorted(runs.items())]


def _break(fam: ff.Family, plan: ff.Plan, how: str, data, d_vocab: int) -> tuple[dict, str]:
    """Inputs of ``plan`` broken in way ``how`` and a regex the error message must match."""
    built = [ff.item_tokens(fam, segs) for segs in plan.items]
    rows, specs = [list(r) for r, _ in built], [s for _, item in built for s in item]
    with_images = [b for b, r in enumerate(rows) if _image_runs(r)]
    b = data.draw(st.sampled_from(with_images), label="item")
    i, first, last = data.draw(st.sampled_from(_image_runs(rows[b])), label="image")
    if how == "drop_image_token":
        del rows[b][data.draw(st.integers(first, last).filter(lambda p: rows[b][p][2] is not None), label="pos")]
        return ff.render(fam, plan, rows, specs).inputs, COUNT
    if how == "truncate":  # cut inside the image, or right before its required closing marker
        ends = [p for p, t in enumerate(rows[b]) if p > last and t[1] == fam.closing_marker][:1]
        rows[b] = rows[b][:data.draw(st.sampled_from(list(range(first, last + 1)) + ends), label="cut")]
        return ff.render(fam, plan, rows, specs).inputs, COUNT + "|image span is truncated or malformed"
    if how == "truncate_left":  # truncation_side="left": cut inside the image, or right after its required opening marker
        opening = OPENING.get(fam.name)
        starts = [p + 1 for p in range(first) if rows[b][p][1] == opening][-1:]
        rows[b] = rows[b][data.draw(st.sampled_from(list(range(first + 1, last + 2)) + starts), label="cut"):]
        return ff.render(fam, plan, rows, specs).inputs, COUNT + "|image span is truncated or malformed"
    if how in ("drop_opening_marker", "drop_closing_marker"):
        role = OPENING[fam.name] if how == "drop_opening_marker" else fam.closing_marker
        at = max(p for p in range(first) if rows[b][p][1] == role) if how == "drop_opening_marker" else \
            min(p for p in range(last, len(rows[b])) if rows[b][p][1] == role)
        del rows[b][at]
        return ff.render(fam, plan, rows, specs).inputs, f"not (preceded|followed) by the {role} token.*truncated or malformed"
    if how == "pixels_without_placeholders":
        bare = [ff.item_tokens(fam, [s for s in segs if s[0] == "text"])[0] for segs in plan.items]
        inputs = ff.render(fam, plan, bare, []).inputs
        inputs.update(fam.pixels(specs, torch.Generator().manual_seed(0)))
        return inputs, "the prompt holds 0 image tokens but the images give"
    inputs = ff.render(fam, plan, rows, specs).inputs
    n = len(specs)
    if how == "no_pixels":
        return {k: inputs[k] for k in ("input_ids", "attention_mask") + (("mm_token_type_ids",) if fam.name == "qwen2" else ())}, \
            "image tokens but no pixel_values were given"
    if how in ("extra_image", "missing_image"):
        changed = specs + [data.draw(fam.image, label="extra")] if how == "extra_image" else specs[:-1]
        for k in ("pixel_values", "image_grid_thw", "image_sizes"):
            inputs.pop(k, None)
        inputs.update(fam.pixels(changed, torch.Generator().manual_seed(0)))
        return inputs, COUNT
    if how == "mask_length":
        mask = inputs["attention_mask"]
        inputs["attention_mask"] = mask[:, 1:] if data.draw(st.booleans(), label="shorter") else \
            torch.cat([mask.new_ones(mask.shape[0], 1), mask], 1)
        return inputs, r"attention_mask has shape .* it must be \[batch, pos\]"
    if how == "out_of_vocab":
        text = [p for p, t in enumerate(inputs["input_ids"][b].tolist()) if inputs["attention_mask"][b, p] and
                t not in set(fam.strays) | {model_image_id(fam)}]
        inputs["input_ids"][b, data.draw(st.sampled_from(text), label="pos")] = data.draw(
            st.sampled_from([d_vocab, d_vocab + 7, -1]), label="id")
        return inputs, r"input_ids hold token id -?\d+, outside the vocabulary"
    if how == "float_ids":
        inputs["input_ids"] = inputs["input_ids"].float()
        return inputs, "input_ids must hold integer token ids"
    if how == "grid_odd":  # pixel rows still agree with the (wrong) grid: only the merge size is violated
        k = data.draw(st.integers(0, n - 1), label="grid row")
        t, h, w = specs[k]
        specs[k] = (t, h + 1, w)
        inputs.update(fam.pixels(specs, torch.Generator().manual_seed(0)))
        return inputs, "image_grid_thw must be .* multiples of 2"
    if how == "grid_patches":
        grid = inputs["image_grid_thw"].clone()
        grid[data.draw(st.integers(0, n - 1), label="grid row"), 1] += 2
        inputs["image_grid_thw"] = grid
        return inputs, r"pixel_values has shape .* with image_grid_thw=.* expects flattened patches"
    if how == "grid_rows":  # one image's grid dropped and its pixel rows with it
        k = data.draw(st.integers(0, n - 1), label="grid row")
        inputs.update(fam.pixels(specs[:k] + specs[k + 1:], torch.Generator().manual_seed(0)) if n > 1 else {})
        if n == 1:
            inputs["image_grid_thw"] = inputs["image_grid_thw"][:0]
        return inputs, COUNT + "|pixel_values has shape .* with image_grid_thw=\\[\\]"
    if how == "grid_shape":
        grid = inputs["image_grid_thw"]
        bad = [grid[:, 1:], grid.flatten(), grid[None], grid * torch.tensor([0, 1, 1]), grid * torch.tensor([1, -1, 1])]
        inputs["image_grid_thw"] = data.draw(st.sampled_from(bad), label="grid")
        return inputs, r"image_grid_thw must be \[n_images, 3\] \(t, h, w\) with every entry > 0"
    if how == "token_types":
        types = inputs["mm_token_type_ids"].clone()
        real = inputs["attention_mask"][b].nonzero().flatten().tolist()
        p = data.draw(st.sampled_from(real), label="pos")
        types[b, p] = 1 - types[b, p]
        inputs["mm_token_type_ids"] = types
        return inputs, "mm_token_type_ids does not mark exactly the image tokens"
    if how == "sizes_too_big":
        sizes = inputs["image_sizes"].clone()
        sizes[data.draw(st.integers(0, n - 1), label="size row"), data.draw(st.integers(0, 1), label="dim")] += \
            data.draw(st.sampled_from([8, 16]), label="by") + inputs["pixel_values"].shape[-1]
        inputs["image_sizes"] = sizes
        return inputs, r"image_sizes\[\d\] = .*(exceeds|does not fit) the pixel batch"
    if how == "sizes_count":
        inputs["image_sizes"] = inputs["image_sizes"][:-1] if data.draw(st.booleans(), label="fewer") else \
            torch.cat([inputs["image_sizes"], inputs["image_sizes"][:1]])
        return inputs, r"\d+ images but \d+ image_sizes|\d+ image_sizes for \d+ images"
    if how == "no_sizes":
        inputs.pop("image_sizes")
        return inputs, "needs image_sizes"
    raise AssertionError(how)


def model_image_id(fam: ff.Family) -> int:
    return ff.load(fam.name).cfg.roles.image_token_id


CASES = [(fam, how) for fam in ff.FAMILIES for how in COMMON + SPECIFIC[fam]]


@pytest.mark.parametrize("fam_name,how", CASES, ids=[f"{f}-{h}" for f, h in CASES])
@SETTINGS
@given(data=st.data())
def test_broken_inputs_raise_clear_errors(fam_name, how, data):
    fam = ff.FAMILIES[fam_name]
    model = ff.load(fam_name)
    plan = data.draw(ff.plans(fam, min_images=1), label="plan")
    inputs, pattern = _break(fam, plan, how, data, model.cfg.d_vocab)
    with pytest.raises(ValueError) as err, torch.no_grad():
        model(**inputs, stop_at_layer=1)
    assert re.search(pattern, str(err.value)), f"{how}: {err.value}"
    if os.environ.get("FUZZ_SHOW"):
        print(f"\n[{fam_name} {how}] {err.value}")
