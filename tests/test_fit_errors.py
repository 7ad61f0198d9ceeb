"""Defaults and errors that fit the model (issue 23, item 5): every analysis runs with its defaults on a model without
end-of-image markers (LLaVA); out-of-range layers, heads and positions name the valid range; a prompt without the
image placeholder says how to fix it; an SAE of the wrong width fails when attached; printed results are short."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from hooked_vlm.toy.data import make_scene, prompt


@functools.lru_cache(maxsize=None)
def toy(name="toy-llava"):
    from hooked_vlm import HookedVLM

    return HookedVLM.from_pretrained(name)


def scene_inputs(colour="red", seed=0, name="toy-llava"):
    scene = make_scene(np.random.default_rng(seed), colour=colour, shape="circle")
    return toy(name).prepare_inputs(images=scene.pil(), text=prompt("colour"))


def test_analysis_defaults_run_on_llava():
    """activation_patching(model, iA, iB) used to fail on LLaVA: its default span was Chameleon's "eoi". The
    default is now "image_end": the eoi marker where a family has one, else the last image token."""
    from hooked_vlm.analysis import (activation_patching, attention_flow, attention_knockout, find_gate, logit_lens,
                                     patching_sweep, source_activations, steer, steering_vector)

    model, iA, iB = toy(), scene_inputs("red"), scene_inputs("blue", seed=1)
    patched = activation_patching(model, iA, iB)
    assert torch.equal(patched, activation_patching(model, iA, iB, span="image_last"))
    clean = model(**iA)
    assert not torch.equal(patched, clean)  # it patched something
    vec = steering_vector(model, iA, iB)
    assert vec.shape == (model.cfg.d_model,) and torch.equal(steer(model, iA, vec), steer(model, iA, vec, span="image_last"))
    assert set(source_activations(model, iA, ["blocks.0.hook_resid_pre"])) == {"blocks.0.hook_resid_pre"}
    red, blue = model.to_single_token("red"), model.to_single_token("blue")
    assert len(patching_sweep(model, iA, iB, [blue, red])) == model.cfg.n_layers
    assert logit_lens(model, iA).top_ids.shape[0] == model.cfg.n_layers + 1
    assert attention_knockout(model, iA).shape == clean.shape
    assert len(attention_flow(model, iA, progress=False)) > 0
    assert len(find_gate(model, iA, progress=False)) > 0


def test_image_end_is_eoi_on_native_models():
    from hooked_vlm.analysis import span_mask, spans_of

    spans = spans_of(toy("toy-chameleon"), scene_inputs(name="toy-chameleon"))
    assert "eoi" in spans and torch.equal(span_mask(spans, "image_end"), spans.mask("eoi"))
    spans = spans_of(toy(), scene_inputs())
    assert "eoi" not in spans and torch.equal(span_mask(spans, "image_end"), span_mask(spans, "image_last"))


def test_out_of_range_layers_heads_positions_name_the_valid_range():
    from hooked_vlm.analysis import knockout_hooks, logit_lens, span_ablation, spans_of

    model, inputs = toy(), scene_inputs()
    n, h = model.cfg.n_layers, model.cfg.n_heads
    with pytest.raises(ValueError, match=rf"layers \[{n}\] out of range: this model has {n} layers \(valid: 0..{n - 1}"):
        knockout_hooks(model, layers=[n])
    with pytest.raises(ValueError, match=rf"heads \[{h}\] out of range: this model has {h} heads \(valid: 0..{h - 1}"):
        knockout_hooks(model, heads=[0, h])
    with pytest.raises(ValueError, match=rf"layers \[{n + 1}\] out of range: .* \(valid: 0..{n}"):
        logit_lens(model, inputs, layers=[0, n + 1])
    seq = inputs["input_ids"].shape[1]
    with pytest.raises(IndexError, match=rf"span positions \[{seq}\] are out of range: .* \(valid: 0..{seq - 1}"):
        span_ablation(model, inputs, span=[3, seq], how="zero")
    spans = spans_of(model, inputs)
    with pytest.raises(IndexError, match=r"batch item 1 is out of range: the batch has 1 item\(s\) \(valid: 0..0\)"):
        spans.positions("image", 1)
    assert torch.equal(span_ablation(model, inputs, span=[-1], how="zero"),
                       span_ablation(model, inputs, span=[seq - 1], how="zero"))  # negative positions still work


def test_prompt_without_placeholder_says_how_to_fix():
    model = toy()
    scene = make_scene(np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"hold no image placeholder \('<image>'\); put one '<image>' in the text"):
        model.prepare_inputs(images=scene.pil(), text="what colour is the shape ?")
    assert model.prepare_inputs(text="what colour is the shape ?")["input_ids"].shape[0] == 1  # text alone is fine


def test_sae_width_checked_when_attached():
    from tests.tiny_sae import TinySAE

    model = toy()
    d = model.cfg.d_model
    with pytest.raises(ValueError, match=rf"d_in=16 but 'blocks.0.hook_resid_post' gives vectors of width {d}"):
        model.add_sae(TinySAE(16, "blocks.0.hook_resid_post"))
    assert model.acts_to_saes == {}  # nothing left attached
    d_mlp = model.cfg.d_mlp
    with pytest.raises(ValueError, match=rf"width {d_mlp} \(the language model's d_mlp\)"):
        model.add_sae(TinySAE(d, "blocks.1.mlp.hook_post"))
    d_vision = model.cfg.vision.tower.d_model
    with pytest.raises(ValueError, match=rf"d_in=16 .* width {d_vision} \(the vision tower's d_model\)"):
        model.add_sae(TinySAE(16, "vision.blocks.0.hook_resid_post"))
    model.add_sae(TinySAE(d, "blocks.0.hook_resid_post"))  # the right width attaches
    model.reset_saes()


def test_printed_results_are_short():
    from hooked_vlm.analysis import logit_lens, patch_attribution

    model, inputs = toy(), scene_inputs()
    lens = logit_lens(model, inputs, targets=["red"])
    attr = patch_attribution(model, inputs, target="red")
    _, cache = model.run_with_cache(**inputs, names_filter="hook_embed")
    for obj in (lens, attr, cache.spans, model.vocab_roles):
        text = repr(obj)
        assert len(text) < 1000 and "tensor(" not in text, text[:300]
    assert "top_ids=Tensor[3, 36, 5] int64" in repr(lens)
    assert repr(cache.spans).startswith("TokenSpans(batch=1, seq_len=47") and "image (36)" in repr(cache.spans)
