"""SAE splicing mechanics (hooked_vlm.saes.splice) with a tiny SAE of SAELens's interface: no sae-lens needed.

Every SAELens class is tested the same way in tests/test_saes_lens.py (min venv, sae-lens installed).
"""

from __future__ import annotations

import pytest
import torch

from tests.tiny_analysis import example, model_and_hf
from tests.tiny_sae import TinySAE

TOL = 1e-5  # max |logits - plain logits| for an exact-inverse SAE or any SAE with its error term
LM_HOOK = "blocks.1.hook_resid_post"
VISION_HOOK = "vision.blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def setup():
    model, hf = model_and_hf()
    inputs = example(hf, 3)
    with torch.no_grad():  # plain: the default (fast attention) path, as a forward with only SAEs spliced takes
        plain = model(**inputs)
        _, cache = model.run_with_cache(**inputs, names_filter=lambda n: "resid" in n)
    return model, inputs, plain, cache


def _logits(model, inputs, **kw):
    with torch.no_grad():
        return model.run_with_saes(inputs, **kw)


@pytest.mark.parametrize("hook", [LM_HOOK, VISION_HOOK])
def test_exact_inverse_sae_leaves_logits_unchanged_and_a_lossy_one_changes_them(setup, hook):
    model, inputs, plain, _ = setup
    d = model.cfg.d_model if not hook.startswith("vision") else model.cfg.vision.tower.d_model
    exact = _logits(model, inputs, saes=[TinySAE(d, hook)])
    assert (exact - plain).abs().max() <= TOL
    lossy = _logits(model, inputs, saes=[TinySAE(d, hook, lossy=True)])
    assert (lossy - plain).abs().max() > 1e-2  # the splice is really in the forward
    with_error = _logits(model, inputs, saes=[TinySAE(d, hook, lossy=True)], use_error_term=True)
    assert (with_error - plain).abs().max() <= TOL
    assert not any(".hook_sae_" in n for n in model.hook_dict)  # removed after the call


def test_cache_holds_the_sae_hooks_under_the_hook_name_and_they_match_a_hand_computation(setup):
    model, inputs, plain, cache = setup
    sae = TinySAE(model.cfg.d_model, LM_HOOK, lossy=True)
    with torch.no_grad():
        logits, sc = model.run_with_cache_with_saes(inputs, saes=[sae], use_error_term=True)
        x = cache[LM_HOOK]
        acts = torch.relu(x @ sae.W_enc)
        recons = acts @ sae.W_dec
    assert (logits - plain).abs().max() <= TOL
    for name in ("hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons", "hook_sae_error",
                 "hook_sae_output"):
        assert f"{LM_HOOK}.{name}" in sc.cache_dict
    assert (sc[f"{LM_HOOK}.hook_sae_acts_post"] - acts).abs().max() <= 1e-5
    assert (sc[f"{LM_HOOK}.hook_sae_recons"] - recons).abs().max() <= 1e-5
    assert (sc[f"{LM_HOOK}.hook_sae_error"] - (x - recons)).abs().max() <= 1e-5
    assert (sc[LM_HOOK] - x).abs().max() <= TOL  # the hook keeps its name and shows what flows on
    assert sc.spans is not None and "image" in sc.spans


def test_editing_a_feature_with_the_error_term_moves_the_stream_by_its_decoder_row(setup):
    model, inputs, _, cache = setup
    sae = TinySAE(model.cfg.d_model, LM_HOOK, lossy=True)
    j = 5

    def kill(acts, hook):
        acts = acts.clone()
        acts[..., j] = 0
        return acts

    with torch.no_grad(), model.saes([sae], use_error_term=True):
        _, sc = model.run_with_cache(inputs, names_filter=[LM_HOOK])
        model.add_hook(f"{LM_HOOK}.hook_sae_acts_post", kill)
        _, edited = model.run_with_cache(inputs, names_filter=[LM_HOOK])
        model.reset_hooks()
    x = cache[LM_HOOK]
    a_j = torch.relu(x @ sae.W_enc[:, j])
    expected = x - a_j[..., None] * sae.W_dec[j]
    assert (sc[LM_HOOK] - x).abs().max() <= TOL
    assert (edited[LM_HOOK] - expected).abs().max() <= TOL
    assert (edited[LM_HOOK] - x).abs().max() > 1e-3


@pytest.mark.parametrize("span, kept", [("image", "text"), ("text", "image")])
def test_spans_restrict_the_sae_and_leave_the_other_positions_bitwise_untouched(setup, span, kept):
    model, inputs, _, _ = setup
    sae = TinySAE(model.cfg.d_model, LM_HOOK, lossy=True)
    with torch.no_grad():  # the same names_filter: a cache of patterns would switch to the explicit attention path
        plain, cache = model.run_with_cache(inputs, names_filter=[LM_HOOK])
        logits, sc = model.run_with_cache_with_saes(inputs, saes=[sae], spans=span, names_filter=[LM_HOOK])
    spans = cache.spans
    out, x = sc[LM_HOOK], cache[LM_HOOK]
    assert torch.equal(out[spans.mask(kept)], x[spans.mask(kept)])
    changed = spans.mask(span)
    assert (out[changed] - x[changed]).abs().min() > 0  # every position of the span took the SAE's output
    before = spans.positions("boi")[0]  # positions before the image see no SAE output at all
    if span == "image":
        assert torch.equal(logits[0, :before + 1], plain[0, :before + 1])


def test_spans_follow_generation_and_an_exact_sae_generates_the_same_tokens(setup):
    model, inputs, _, _ = setup
    d = model.cfg.d_model
    with torch.no_grad():
        plain = model.generate(**inputs, max_new_tokens=4, return_type="tokens", stop_at_eos=False)
        with model.saes([TinySAE(d, LM_HOOK)]):
            spliced = model.generate(**inputs, max_new_tokens=4, return_type="tokens", stop_at_eos=False)
        seen = []
        sae = TinySAE(d, LM_HOOK, lossy=True)
        with model.saes([sae], spans="generated"):
            model.add_hook(f"{LM_HOOK}.hook_sae_output", lambda t, hook: seen.append(t.shape[1]))
            model.generate(**inputs, max_new_tokens=3, stop_at_eos=False)
            model.reset_hooks()
    assert torch.equal(plain, spliced)
    assert seen[0] == inputs["input_ids"].shape[1] and seen[1:] == [1, 1]  # prompt, then one query per step


def test_add_reset_and_the_context_restore_what_was_there(setup):
    model, inputs, plain, _ = setup
    d = model.cfg.d_model
    original = model.hook_dict[LM_HOOK]
    a, b = TinySAE(d, LM_HOOK, lossy=True, seed=1), TinySAE(d, LM_HOOK, lossy=True, seed=2)
    with torch.no_grad():
        model.add_sae(a, spans="image")
        with_a = model(inputs)
        assert model.acts_to_saes == {LM_HOOK: a}
        with model.saes([b]):
            assert model.acts_to_saes[LM_HOOK] is b
            with_b = model(inputs)
        assert model.acts_to_saes[LM_HOOK] is a
        again_a = model(inputs)
        model.reset_saes()
        after = model(inputs)
    assert (with_a - with_b).abs().max() > 1e-3
    assert torch.equal(with_a, again_a)  # a is back with its spans
    assert torch.equal(after, plain)
    assert model.hook_dict[LM_HOOK] is original and model.blocks[1].hook_resid_post is original
    assert model.acts_to_saes == {} and not any(".hook_sae_" in n for n in model.hook_dict)
    assert not any(k.startswith("blocks.1.hook_resid_post.") for k in model.state_dict())


def test_bad_saes_and_hooks_get_clear_errors(setup):
    model, inputs, _, _ = setup
    d = model.cfg.d_model
    with pytest.raises(KeyError, match="Did you mean"):
        model.add_sae(TinySAE(d, "blocks.1.hook_resid_pots"))
    with pytest.raises(ValueError, match="d_in=16"):
        model.run_with_saes(inputs, saes=[TinySAE(16, LM_HOOK)])
    with pytest.raises(ValueError, match="fast attention path"):
        model.add_sae(TinySAE(d, "blocks.0.attn.hook_pattern"))
    with pytest.raises(ValueError, match="vision-tower"):
        model.add_sae(TinySAE(model.cfg.vision.tower.d_model, VISION_HOOK), spans="image")
    with pytest.raises(TypeError, match="not an SAE"):
        model.add_sae(torch.nn.Linear(d, d), hook_name=LM_HOOK)
    with pytest.raises(KeyError, match="no SAE is attached"):
        model.reset_saes(LM_HOOK)
    assert model.acts_to_saes == {} and model.hook_dict[LM_HOOK].__class__.__name__ == "HookPoint"
