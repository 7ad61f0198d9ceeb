"""TransformerLens's own hook tests as the spec, re-asked of HookedVLM on the shipped toy LLaVA.

Each test names the TL test(s) it mirrors (TransformerLens repo, tests/...::test). Ours, not copies: the same
property, on a VLM (image + text inputs, vision-tower hooks beside the LM's). docs/tl_mirrored_tests.md lists
every TL test mirrored, and the ones that do not apply and why.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hooked_vlm.hook_points import HookPoint

RESID = "blocks.0.hook_resid_post"
VISION_RESID = "vision.blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def toy():
    from hooked_vlm import HookedVLM
    from hooked_vlm.toy.data import make_scene, prompt

    model = HookedVLM.from_pretrained("toy-llava")
    scene = make_scene(np.random.default_rng(0))
    return model, model.prepare_inputs(images=scene.pil(), text=prompt("colour"))


@pytest.fixture
def model(toy):
    model, _ = toy
    model.reset_hooks(including_permanent=True)
    yield model
    model.reset_hooks(including_permanent=True)


@pytest.fixture
def inputs(toy):
    return toy[1]


class Counter:
    def __init__(self):
        self.count = 0

    def inc(self, tensor, hook):
        self.count += 1


def identity(tensor, hook):
    return tensor


def n_fwd(model, name=RESID):
    return len(model.hook_dict[name].fwd_hooks)


# ---------------------------------------------------------------- HookPoint (tests/unit/test_hook_points.py)
def test_add_hook_directions_permanence_and_level():
    """Mirrors tests/unit/test_hook_points.py::test_add_hook_forward, ::test_add_hook_backward,
    ::test_add_hook_permanent and ::test_add_hook_with_level, on hooked_vlm's HookPoint (it wraps forward hooks)."""
    hp = HookPoint()
    hp.add_hook(identity, dir="fwd")
    hp.add_hook(identity, dir="bwd")
    hp.add_hook(identity, dir="fwd", is_permanent=True, level=5)
    assert len(hp.fwd_hooks) == 2 and len(hp.bwd_hooks) == 1
    assert not hp.fwd_hooks[0].is_permanent and hp.fwd_hooks[1].is_permanent
    assert hp.fwd_hooks[1].context_level == 5 and hp.fwd_hooks[0].context_level is None


def test_add_hook_prepend_runs_first():
    """Mirrors tests/unit/test_hook_points.py::test_add_hook_prepend: a prepended hook is first in fwd_hooks and
    runs first."""
    hp, order = HookPoint(), []
    first = lambda t, hook: order.append("appended")  # noqa: E731
    second = lambda t, hook: order.append("prepended")  # noqa: E731
    hp.add_hook(first)
    hp.add_hook(second, prepend=True)
    assert [h.user_hook for h in hp.fwd_hooks] == [second, first]
    hp(torch.zeros(2))
    assert order == ["prepended", "appended"]


def test_has_hooks_filters():
    """Mirrors tests/unit/test_hook_points.py::TestHookPointHasHooks: ::test_no_hooks_returns_false,
    ::test_forward_hook_detection, ::test_backward_hook_detection, ::test_both_direction_hooks,
    ::test_permanent_hook_detection, ::test_non_permanent_hook_detection, ::test_mixed_permanent_hooks,
    ::test_only_permanent_hooks, ::test_context_level_filtering, ::test_context_level_with_direction,
    ::test_context_level_with_permanent_flags, ::test_all_parameters_combined, ::test_multiple_hooks_same_criteria,
    ::test_default_parameter_values, ::test_edge_case_empty_after_filtering."""
    hp = HookPoint()
    assert not any(hp.has_hooks(dir=d) for d in ("fwd", "bwd", "both"))
    hp.add_hook(identity, dir="fwd", level=0, is_permanent=True)
    hp.add_hook(identity, dir="fwd", level=1)
    hp.add_hook(identity, dir="bwd", level=2, is_permanent=True)
    assert hp.has_hooks() and hp.has_hooks(dir="both", including_permanent=True, level=None)
    assert hp.has_hooks(dir="fwd", level=0) and not hp.has_hooks(dir="fwd", level=0, including_permanent=False)
    assert hp.has_hooks(dir="fwd", level=1, including_permanent=False)
    assert hp.has_hooks(dir="bwd", level=2) and not hp.has_hooks(dir="bwd", including_permanent=False)
    assert not hp.has_hooks(dir="bwd", level=1) and not hp.has_hooks(level=3) and not hp.has_hooks(level=-1)
    only_perm = HookPoint()
    only_perm.add_hook(identity, dir="fwd", is_permanent=True, level=5)
    assert only_perm.has_hooks() and not only_perm.has_hooks(including_permanent=False)
    assert not only_perm.has_hooks(dir="bwd") and not only_perm.has_hooks(level=0)


def test_has_hooks_after_removal_and_bad_direction():
    """Mirrors tests/unit/test_hook_points.py::TestHookPointHasHooks::test_hook_removal_affects_detection and
    ::test_invalid_direction_raises_error (TL's beartype error there; a plain ValueError without beartype)."""
    hp = HookPoint()
    hp.add_hook(identity, dir="fwd")
    hp.remove_hooks(dir="both")
    assert not hp.has_hooks()
    with pytest.raises(Exception, match="(?i)dir"):
        hp.has_hooks(dir="sideways")


def test_hook_point_runs_hook_and_uses_its_return(model, inputs):
    """Mirrors tests/unit/test_hook_points.py::TestHookPointHasHooks::test_functional_hook_execution_still_works and
    ::test_hook_point_with_conversions: a hook runs, and what it returns replaces the activation (here on the toy:
    doubling blocks.0.hook_resid_post doubles what blocks.1.hook_resid_pre sees)."""
    seen = {}
    model.run_with_hooks(**inputs, fwd_hooks=[(RESID, lambda t, hook: t * 2),
                                              ("blocks.1.hook_resid_pre", lambda t, hook: seen.setdefault("x", t))])
    _, cache = model.run_with_cache(**inputs, names_filter=RESID)
    assert torch.equal(seen["x"], cache[RESID] * 2)


# ---------------------------------------------------------------- introspection (tests/unit/test_hook_introspection.py)
def test_list_hooks_shows_the_users_function(model):
    """Mirrors tests/unit/test_hook_introspection.py::test_lens_handle_stores_user_hook and
    ::test_list_hooks_returns_user_callable. Failed before this branch: hooked_vlm wraps forward hooks in a
    shape check, and list_hooks() showed the wrapper."""
    model.add_hook(RESID, identity)
    assert model.hook_dict[RESID].fwd_hooks[0].user_hook is identity
    listed = model.list_hooks()
    assert set(listed) == {RESID} and listed[RESID][0].user_hook is identity


def test_hookpoint_repr(model):
    """Mirrors tests/unit/test_hook_introspection.py::test_hookpoint_repr_includes_hook_count and
    ::test_hookpoint_repr_with_no_name_and_no_hooks."""
    assert repr(HookPoint()) == "HookPoint()"
    model.add_hook(RESID, identity)
    model.add_hook(RESID, identity)
    text = repr(model.hook_dict[RESID])
    assert RESID in text and "2 fwd" in text and "bwd" not in text


def test_list_hooks_filters(model):
    """Mirrors tests/unit/test_hook_introspection.py::test_list_hooks_empty_model_returns_empty_dict,
    ::test_list_hooks_name_filter_string, ::test_list_hooks_name_filter_list, ::test_list_hooks_name_filter_callable,
    ::test_list_hooks_direction_filter and ::test_list_hooks_excludes_permanent_when_requested; with a vision hook."""
    assert model.list_hooks() == {}
    other = lambda t, hook: None  # noqa: E731
    model.add_hook(RESID, identity)
    model.add_hook(RESID, other, dir="bwd")
    model.add_perma_hook(VISION_RESID, other)
    assert set(model.list_hooks(name_filter=RESID)) == {RESID}
    assert set(model.list_hooks(name_filter=[RESID, VISION_RESID])) == {RESID, VISION_RESID}
    assert set(model.list_hooks(name_filter=lambda n: n.startswith("vision."))) == {VISION_RESID}
    assert [len(model.list_hooks(dir=d)[RESID]) for d in ("fwd", "bwd", "both")] == [1, 1, 2]
    assert set(model.list_hooks(including_permanent=False)) == {RESID}
    assert model.list_hooks(including_permanent=True)[VISION_RESID][0].user_hook is other


# ---------------------------------------------------------------- HookedRootModule (test_hooked_root_module.py)
def test_context_hooks_get_the_context_level(model):
    """Mirrors tests/unit/test_hooked_root_module.py::test_enable_hook_with_name, ::test_enable_hooks_for_points,
    ::test_enable_hook_with_string_param and ::test_enable_hook_with_callable_param: hooks() adds a named hook, or
    one per name a filter accepts, at the current context level."""
    with model.hooks(fwd_hooks=[(RESID, identity)]):
        assert model.hook_dict[RESID].fwd_hooks[0].context_level == model.context_level == 1
        with model.hooks(fwd_hooks=[(lambda n: n.endswith("attn.hook_pattern"), identity)]):
            hooked = {n for n, hp in model.hook_dict.items() if hp.fwd_hooks}
            assert hooked == {RESID, *(n for n in model.hook_dict if n.endswith("attn.hook_pattern"))}
            assert all(model.hook_dict[n].fwd_hooks[-1].context_level == 2 for n in hooked - {RESID})
        assert {n for n, hp in model.hook_dict.items() if hp.fwd_hooks} == {RESID}


# ---------------------------------------------------------------- run_with_hooks / hooks() (test_hooks.py)
def test_hook_attaches_normally(model, inputs):
    """Mirrors tests/integration/test_hooks.py::test_hook_attaches_normally (a name filter, on a VLM)."""
    c = Counter()
    model.run_with_hooks(**inputs, fwd_hooks=[(lambda n: n == "hook_embed", c.inc)])
    assert c.count == 1 and all(not hp.fwd_hooks for hp in model.hook_points())


def test_perma_hook_attaches_normally(model, inputs):
    """Mirrors tests/integration/test_hooks.py::test_perma_hook_attaches_normally and
    tests/integration/model_bridge/compatibility/test_bridge_hook_behavior.py::test_perma_hook_persists_across_calls."""
    c = Counter()
    model.add_perma_hook("hook_embed", c.inc)
    model.run_with_hooks(**inputs, fwd_hooks=[])
    model(**inputs)
    assert n_fwd(model, "hook_embed") == 1 and c.count == 2


def test_hook_context_manager(model, inputs):
    """Mirrors tests/integration/test_hooks.py::test_hook_context_manager and ::test_context_manager_run_with_cache."""
    c = Counter()
    with model.hooks(fwd_hooks=[("hook_embed", c.inc)]):
        assert n_fwd(model, "hook_embed") == 1
        model(**inputs)
        model.run_with_cache(**inputs, names_filter="hook_embed")
        assert n_fwd(model, "hook_embed") == 1
    assert n_fwd(model, "hook_embed") == 0 and c.count == 2


def test_nested_hook_context_manager(model, inputs):
    """Mirrors tests/integration/test_hooks.py::test_nested_hook_context_manager."""
    c = Counter()
    with model.hooks(fwd_hooks=[("hook_embed", c.inc)]):
        model(**inputs)
        with model.hooks(fwd_hooks=[("hook_embed", c.inc)]):
            assert n_fwd(model, "hook_embed") == 2
            model(**inputs)
        assert n_fwd(model, "hook_embed") == 1 and c.count == 3
    assert n_fwd(model, "hook_embed") == 0


def test_nested_context_manager_with_failure(model, inputs):
    """Mirrors tests/integration/test_hooks.py::test_nested_context_manager_with_failure and
    tests/integration/model_bridge/compatibility/test_bridge_hook_behavior.py::test_hook_error_propagates."""
    def fail(t, hook):
        raise ValueError("fail")

    c = Counter()
    with model.hooks(fwd_hooks=[("hook_embed", c.inc)]):
        with pytest.raises(ValueError, match="fail"):
            with model.hooks(fwd_hooks=[(VISION_RESID, fail)]):
                model(**inputs)
        assert n_fwd(model, "hook_embed") == 1 and n_fwd(model, VISION_RESID) == 0
    assert n_fwd(model, "hook_embed") == 0


def test_hook_context_manager_with_permanent_hook(model, inputs):
    """Mirrors tests/integration/test_hooks.py::test_hook_context_manager_with_permanent_hook."""
    c = Counter()
    model.add_perma_hook("hook_embed", c.inc)
    with model.hooks(fwd_hooks=[("hook_embed", c.inc)]):
        assert n_fwd(model, "hook_embed") == 2
        model(**inputs)
    assert n_fwd(model, "hook_embed") == 1 and c.count == 2


def test_reset_hooks_in_context_manager(model):
    """Mirrors tests/integration/test_hooks.py::test_reset_hooks_in_context_manager."""
    with model.hooks(fwd_hooks=[("hook_embed", identity)]):
        model.reset_hooks()
        assert n_fwd(model, "hook_embed") == 0
    assert n_fwd(model, "hook_embed") == 0


def test_remove_hook(model, inputs):
    """Mirrors tests/integration/test_hooks.py::test_remove_hook: permanent hooks survive remove_all_hook_fns()
    unless including_permanent=True."""
    c = Counter()
    model.add_perma_hook("hook_embed", c.inc)
    model.remove_all_hook_fns()
    assert n_fwd(model, "hook_embed") == 1
    model.remove_all_hook_fns(including_permanent=True)
    model(**inputs)
    assert n_fwd(model, "hook_embed") == 0 and c.count == 0


def test_backward_hooks(model, inputs):
    """Mirrors tests/integration/test_hooks.py::test_backward_hook_runs_successfully,
    ::test_backward_hook_returning_bare_tensor and ::test_backward_hook_returning_none; the returned gradient is the
    one that flows on (a vision-tower hook scaling the gradient by 3 triples the gradient reaching the pixels)."""
    grads = {}
    pixels = inputs["pixel_values"].clone().requires_grad_(True)

    def run(bwd_hooks):
        pixels.grad = None
        with model.hooks(bwd_hooks=bwd_hooks):
            model(**dict(inputs, pixel_values=pixels))[0, -1].sum().backward()
        return pixels.grad.clone()

    c = Counter()
    as_tuple = lambda g, hook: (c.inc(g, hook), (g,))[1]  # noqa: E731
    bare = lambda g, hook: g * 3  # noqa: E731

    def observe(g, hook):
        grads[hook.name] = g.clone()  # returns None: the gradient flows on unchanged
    base = run([])
    assert torch.allclose(run([(VISION_RESID, as_tuple)]), base) and c.count == 1
    # fp32 backward through the norms: max |diff| 1.9e-6 on gradients up to 1.2 (measured); 1e-5 is the bound
    assert (run([(VISION_RESID, bare)]) - base * 3).abs().max().item() <= 1e-5
    assert torch.allclose(run([(VISION_RESID, observe)]), base) and VISION_RESID in grads
    assert all(not hp.bwd_hooks for hp in model.hook_points())


@pytest.mark.parametrize("zero_attach_pos,prepend", [(z, p) for z in range(2) for p in (True, False)])
def test_prepending_hooks(model, inputs, zero_attach_pos, prepend):
    """Mirrors tests/integration/test_hooks.py::test_prepending_hooks: zero the last residual stream and add noise;
    the logits are those of a zero residual (0: RMS norm of zeros, no unembedding bias) exactly when the zeroing hook
    runs last."""
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"

    def set_to_zero(z, hook):
        return torch.zeros_like(z)

    def set_to_randn(z, hook):
        return torch.randn_like(z) * 0.1

    for idx in range(2):
        model.add_hook(last, set_to_zero if idx == zero_attach_pos else set_to_randn, prepend=prepend)
    logits = model(**inputs)
    zero_runs_last = (zero_attach_pos == 1) != prepend
    assert bool((logits == 0).all()) == zero_runs_last


def test_hooks_need_existing_names(model, inputs):
    """Adapts tests/integration/test_hooks.py::test_conditional_hooks: TL refuses hooks on points switched off
    (use_attn_result, ...); HookedVLM has no optional hook points, so the property left is that a hook on a name
    the model does not have is refused, with the closest names."""
    with pytest.raises(KeyError, match="hook_resid_post"):
        model.add_hook("blocks.0.hook_resid_pots", identity)
    with pytest.raises(KeyError, match="hook_result"):
        model.run_with_hooks(**inputs, fwd_hooks=[("blocks.0.attn.hook_result", identity)])


# ---------------------------------------------------------------- pattern hooks (test_main_demo_pattern_hooks.py)
def test_pattern_filter_hooks_called_once_per_layer_with_layer(model, inputs):
    """Mirrors tests/integration/test_main_demo_pattern_hooks.py::test_pattern_filter_hook_works,
    ::test_pattern_hooks_called_once_per_layer and ::test_hook_layer_method_works, plus
    tests/integration/model_bridge/compatibility/test_bridge_hook_behavior.py::test_hook_fires_once_per_forward: a
    filter on "pattern" reaches every attention layer once, LM and vision tower apart by prefix, and hook.layer() gives
    each one's block (vision hooks used to raise: TL's layer() reads the second name part, "blocks")."""
    calls = []
    record = lambda p, hook: calls.append((hook.name, hook.layer(), tuple(p.shape)))  # noqa: E731
    model.run_with_hooks(**inputs, fwd_hooks=[(lambda n: n.endswith("hook_pattern"), record)])
    lm = [c for c in calls if not c[0].startswith("vision.")]
    vision = [c for c in calls if c[0].startswith("vision.")]
    assert [c[1] for c in lm] == list(range(model.cfg.n_layers))
    assert [c[1] for c in vision] == list(range(len(model.vision.blocks)))
    n = inputs["input_ids"].shape[1]
    assert all(shape == (1, model.cfg.n_heads, n, n) for _, _, shape in lm)
    with pytest.raises(ValueError, match="not inside a block"):
        model.hook_dict["hook_image_embeds"].layer()


def test_run_with_hooks_and_cache_leave_no_hooks_and_match_forward(model, inputs):
    """Mirrors tests/integration/model_bridge/compatibility/test_bridge_hook_behavior.py::test_run_with_hooks_cleans_up
    and tests/acceptance/model_bridge/compatibility/test_run_with_cache.py::test_run_with_cache_matches_forward_pass
    and ::test_transformer_bridge_run_with_cache_preserves_existing_backward_hooks."""
    keep = lambda g, hook: None  # noqa: E731
    model.add_hook(RESID, keep, dir="bwd")
    logits, _ = model.run_with_cache(**inputs)
    model.run_with_hooks(**inputs, fwd_hooks=[(RESID, identity)])
    # run_with_cache caches hook_pattern, so it takes the explicit attention path; fast == explicit to 1e-5
    assert (logits - model(**inputs)).abs().max().item() <= 1e-5
    assert [h.user_hook for h in model.hook_dict[RESID].bwd_hooks] == [keep]
    assert all(not hp.fwd_hooks for hp in model.hook_points())
