"""No stale or silent state (issue 23, item 3): every hook of every forward sees that forward's spans; span masks of
the wrong length raise; a whole-sequence hook kept active in generate fails naming hook.query_positions; unknown
target words raise with the closest vocabulary entries."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from hooked_vlm.toy.data import make_scene, prompt


@functools.lru_cache(maxsize=None)
def toy():
    from hooked_vlm import HookedVLM

    return HookedVLM.from_pretrained("toy-llava")


def scene_inputs(colour="red", seed=0, text=None):
    model = toy()
    scene = make_scene(np.random.default_rng(seed), colour=colour, shape="circle")
    return model.prepare_inputs(images=scene.pil(), text=text or prompt("colour"))


SPAN_HOOKS = ("vision.hook_embed", "vision.blocks.0.hook_resid_post", "projector.hook_in", "projector.hook_out",
              "hook_image_embeds", "hook_embed", "blocks.1.hook_resid_post")


def test_spans_current_in_every_hook_of_every_forward():
    """Two forwards of different lengths and batch sizes: in each, every hook (vision tower, projector and image
    embeddings included) sees the spans of THAT forward -- the very object the cache carries."""
    model = toy()
    first = scene_inputs(text=prompt("colour"))
    second = model.prepare_inputs(images=[make_scene(np.random.default_rng(s)).pil() for s in (1, 2)],
                                  text=[prompt("shape"), "USER: <image>\nwhat colour ? ASSISTANT:"])
    for inputs in (first, second, first):
        seen = {}

        def look(act, hook):
            seen[hook.name] = hook.spans

        _, cache = model.run_with_cache(**inputs, names_filter=lambda n: n == "hook_embed")
        model.run_with_hooks(**inputs, fwd_hooks=[(n, look) for n in SPAN_HOOKS])
        assert set(seen) == set(SPAN_HOOKS)
        for name, spans in seen.items():
            assert spans is not None, name
            assert spans is seen["hook_embed"], name  # one spans object per forward
            assert spans.seq_len == inputs["input_ids"].shape[1] and spans.batch == inputs["input_ids"].shape[0], name
            assert torch.equal(spans.mask("image"), cache.spans.mask("image")), name


def test_short_span_mask_raises():
    """A mask built from model.to_tokens(prompt) is shorter than the sequence (the image placeholder expands to 36
    image tokens in prepare_inputs); it used to be padded with False and hit the wrong positions."""
    from hooked_vlm.analysis import span_ablation

    model, inputs = toy(), scene_inputs()
    text_mask = model.to_tokens(prompt("colour")) == model.to_single_token("colour")
    assert text_mask.shape[1] < inputs["input_ids"].shape[1]
    with pytest.raises(ValueError, match=r"span mask has shape \(1, \d+\); this forward's sequence is .*to_tokens"):
        span_ablation(model, inputs, span=text_mask, how="zero")
    with pytest.raises(ValueError, match="span mask has shape"):  # longer masks too
        span_ablation(model, inputs, span=torch.ones(1, inputs["input_ids"].shape[1] + 1, dtype=torch.bool), how="zero")


def test_prompt_mask_in_generate_needs_prompt_span():
    """A prompt mask kept active in generate: the sequence grows, so a bare mask raises (naming prompt_span and the
    span 'generated'); prompt_span(mask) says explicitly that the new positions are not in it, and then gives the
    same tokens as the span name."""
    from hooked_vlm.analysis import knockout_generate, prompt_span

    model, inputs = toy(), scene_inputs()
    _, cache = model.run_with_cache(**inputs, names_filter="hook_embed")
    image = cache.spans.mask("image")
    with pytest.raises(ValueError, match=r"prompt_span\(mask\).*'generated'"):
        knockout_generate(model, inputs, src=image, dst="text", max_new_tokens=3, return_type="tokens")
    by_mask = knockout_generate(model, inputs, src=prompt_span(image), dst="text", max_new_tokens=3, return_type="tokens")
    by_name = knockout_generate(model, inputs, src="image", dst="text", max_new_tokens=3, return_type="tokens")
    assert torch.equal(by_mask, by_name)
    # the new positions, named: "generated" (and prompt_span(..., generated=True)) select exactly the rows each
    # generate step computes after the prompt pass, and none of the prompt's
    from hooked_vlm.analysis import query_rows

    seen = []

    def record(act, hook):
        seen.append((query_rows(hook, "generated").tolist(),
                     query_rows(hook, prompt_span(torch.zeros_like(image), generated=True)).tolist(),
                     query_rows(hook, prompt_span(image)).tolist()))

    with model.hooks(fwd_hooks=[("hook_embed", record)]):
        model.generate(**inputs, max_new_tokens=3, stop_at_eos=False)
    n = inputs["input_ids"].shape[1]
    assert seen[0] == ([[False] * n], [[False] * n], image.tolist())  # the prompt pass
    assert seen[1:] == [([[True]], [[True]], [[False]])] * 2  # each later step: one new position
    with pytest.raises(ValueError, match="prompt_span: the mask has shape"):
        knockout_generate(model, inputs, src=prompt_span(image[:, :-1]), dst="text", max_new_tokens=2)


def test_whole_sequence_hook_in_generate_names_query_positions():
    """The README's zero_image indexes whole-sequence positions: kept active in generate it used to fail at the
    second step with a bare IndexError from torch; now the error names hook.query_positions and the fix."""
    model, inputs = toy(), scene_inputs()

    def zero_image(resid, hook):  # the README's hook before the fix
        resid[:, hook.spans.positions("image", 0)] = 0
        return resid

    model.run_with_hooks(**inputs, fwd_hooks=[("hook_embed", zero_image)])  # one forward: fine
    with model.hooks(fwd_hooks=[("hook_embed", zero_image)]):
        with pytest.raises(IndexError, match=r"(?s)hook zero_image on 'hook_embed'.*hook\.query_positions"):
            model.generate(**inputs, max_new_tokens=3)


def test_query_position_hook_works_in_generate():
    """The documented form (rows of this forward: the spans at hook.query_positions) works in one forward and in
    every generate step, and equals the ablation done by hand on the embeddings."""
    model, inputs = toy(), scene_inputs()

    def zero_image(resid, hook):
        resid[hook.spans.mask("image")[:, hook.query_positions]] = 0
        return resid

    logits = model.run_with_hooks(**inputs, fwd_hooks=[("hook_embed", zero_image)])
    _, cache = model.run_with_cache(**inputs, names_filter="hook_embed")
    by_hand = cache["hook_embed"].clone()
    by_hand[:, cache.spans.positions("image")] = 0
    edited = model.run_with_hooks(**inputs, fwd_hooks=[("hook_embed", lambda r, hook: by_hand)])
    assert torch.equal(logits, edited)
    with model.hooks(fwd_hooks=[("hook_embed", zero_image)]):
        out = model.generate(**inputs, max_new_tokens=3, return_type="tokens")
    assert out.shape[1] <= inputs["input_ids"].shape[1] + 3
    assert int(out[0, inputs["input_ids"].shape[1]]) == int(logits[0, -1].argmax())


def test_unknown_target_word_raises_with_closest_entries():
    """logit_lens(targets=["gren"]) used to read 'gren' as <unk> and plot it."""
    from hooked_vlm.analysis import logit_lens

    model, inputs = toy(), scene_inputs()
    with pytest.raises(ValueError, match=r"'gren' is not in the vocabulary.*closest vocabulary entries: 'green'"):
        logit_lens(model, inputs, targets=["gren"])
    with pytest.raises(ValueError, match="closest vocabulary entries: 'red'"):
        model.tokens_to_residual_directions("redd")
    lens = logit_lens(model, inputs, targets=["green"], layers=[2])
    assert int(lens.target_ids[0]) == model.tokenizer.convert_tokens_to_ids("green")


def test_layouts_from_inputs_must_match_the_encoding(monkeypatch):
    """The spans come from each pipeline's layouts function (inputs only); the forward checks the encoding gave the
    same layouts, so a layouts function that drifts from its pipeline fails loudly instead of mislabelling patches."""
    from hooked_vlm.pipelines import LAYOUTS
    from hooked_vlm.spans import ImageLayout

    model, inputs = toy(), scene_inputs()
    right = LAYOUTS["vit_mlp"](model, inputs["pixel_values"], {})
    assert right == [ImageLayout(rows=6, cols=6)]
    monkeypatch.setitem(LAYOUTS, "vit_mlp", lambda m, pv, ex: [ImageLayout(rows=36, cols=1)])  # same token count
    with pytest.raises(RuntimeError, match=r"image pipeline 'vit_mlp': its layouts function gave .* the two must agree"):
        model(**inputs)
