"""Hook points: golden list of names, every hook fires, edits change outputs, fast == explicit attention."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest
import torch

from tests import tiny, tiny_native
from tests import tiny_cohere as tco
from tests import tiny_gemma3 as tg3
from tests import tiny_gemma4 as tg4
from tests import tiny_internvl as tiv
from tests import tiny_idefics2 as ti2
from tests import tiny_llama4 as tl4
from tests import tiny_lfm2vl as tlv
from tests import tiny_llava_like as tll
from tests import tiny_mllama as tml
from tests import tiny_molmo2 as tm2
from tests import tiny_next_pixtral as tnp
from tests import tiny_ovis2 as tov
from tests import tiny_qwen3vl as tq3
from tests import tiny_glm4v as tgl
from tests import tiny_exaone45 as tex
from tests import tiny_hunyuanvl as thy
from tests import tiny_qwen35 as tq35
from tests import tiny_qwen_idefics as tqi
from tests import tiny_sam as tsam

GOLDEN = Path(__file__).parent / "golden"


def llava():
    """(model, inputs): the shared 2-layer tiny LLaVA (2-layer CLIP tower), one and two images, 4 left pads."""
    b = tiny.llava(text=tiny.llama_text_config(num_hidden_layers=2, num_key_value_heads=2),
                   vision=tiny.clip_vision_config(num_hidden_layers=2), images=(1, 2), pads=(4, 0))
    return b.model, b.inputs


def _from_factory(factory):
    """A cached tests.tiny factory -> a builder of (model, inputs)."""
    def build():
        b = factory()
        return b.model, b.inputs

    return build


#: golden file -> builder of (model, inputs); one entry per family (the shared builds of tests/tiny*.py)
FAMILIES = {
    "llava": llava,
    "llava_next": _from_factory(tnp.llava_next),
    "llava_onevision": _from_factory(tnp.onevision),
    "pixtral_llava": _from_factory(tnp.pixtral),
    "mistral3": _from_factory(tnp.mistral3),
    "qwen2_vl": _from_factory(functools.partial(tqi.qwen, "2")),
    "qwen2_5_vl": _from_factory(functools.partial(tqi.qwen, "2.5")),
    "idefics3": _from_factory(functools.partial(tqi.idefics, "idefics3")),
    "smolvlm": _from_factory(functools.partial(tqi.idefics, "smolvlm")),
    "chameleon": _from_factory(tiny_native.chameleon),
    "emu3": _from_factory(tiny_native.emu3),
    "janus": _from_factory(tiny_native.janus),
    "gemma3": _from_factory(tg3.gemma3),
    "qwen3vl": _from_factory(tq3.qwen3vl),
    "qwen3vl_moe": _from_factory(functools.partial(tq3.qwen3vl, moe=True)),
    "internvl": _from_factory(tiv.internvl),
    "internvl_qwen3": _from_factory(functools.partial(tiv.internvl, "qwen3")),
    "idefics2": _from_factory(ti2.idefics2),
    "aya_vision": _from_factory(tco.aya),
    "aya_vision_cohere_lm": _from_factory(functools.partial(tco.aya, "cohere")),
    "cohere2_vision": _from_factory(tco.cohere2_vision),
    "lfm2vl": _from_factory(tlv.lfm2vl),
    "qwen3_5": _from_factory(tq35.qwen35),
    "qwen3_5_moe": _from_factory(functools.partial(tq35.qwen35, moe=True)),
    "vipllava": _from_factory(tll.vipllava),
    "granite_vision": _from_factory(tll.granite_vision),
    "lighton_ocr": _from_factory(tll.lighton_ocr),
    "llava_next_video": _from_factory(tll.llava_next_video),
    "deepseek_vl": _from_factory(tll.deepseek_vl),
    "deepseek_vl_hybrid": _from_factory(tsam.deepseek_vl_hybrid),
    "got_ocr2": _from_factory(tsam.got_ocr2),
    "mllama": _from_factory(tml.mllama),
    "qwen3_5": _from_factory(tq35.qwen35),
    "qwen3_5_moe": _from_factory(functools.partial(tq35.qwen35, moe=True)),
    "gemma4_ple_kv": _from_factory(functools.partial(tg4.gemma4, "ple_kv")),
    "gemma4_k_eq_v_moe": _from_factory(functools.partial(tg4.gemma4, "k_eq_v_moe")),
    "glm4v": _from_factory(tgl.glm4v),
    "glm4v_moe": _from_factory(tgl.glm4v_moe),
    "glm46v": _from_factory(tgl.glm46v),
    "llama4": _from_factory(tl4.llama4_vlm),
    "ovis2": _from_factory(tov.ovis2),
    "exaone4_5": _from_factory(tex.exaone45),
    "hunyuan_vl": _from_factory(thy.hunyuanvl),
    "molmo2": _from_factory(tm2.molmo2),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_hook_names_are_golden(family):
    model, _ = FAMILIES[family]()
    expected = (GOLDEN / f"hook_names_{family}.txt").read_text().split()
    assert sorted(model.hook_dict) == expected


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_lm_entries_have_batch_then_positions_where_the_cache_slices(family):
    """The layout rule behind run_with_cache(pos_slice=...) and cache batch slicing (hooked_vlm.activation_cache):
    every LM entry is [batch, ...] with the sequence on lm_pos_axis (none for recurrent states); the rest is the
    image path (vision tower, projector, image embeddings). TL's own rule (by name) slices image tokens and heads."""
    from hooked_vlm.activation_cache import is_per_image, is_unbatched, lm_pos_axis

    model, inputs = FAMILIES[family]()
    _, cache = model.run_with_cache(**inputs)
    b, n = inputs["input_ids"].shape
    for name, value in cache.items():
        if is_unbatched(name):  # parameters' functions (tanh gates): no batch axis
            assert value.ndim <= 1, (name, tuple(value.shape))
        elif not is_per_image(name):
            axis = lm_pos_axis(name)
            assert value.shape[0] == b and (axis is None or value.shape[axis] == n), (name, tuple(value.shape))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_hook_fires(family):
    model, inputs = FAMILIES[family]()
    fired = set()
    model.run_with_hooks(**inputs, fwd_hooks=[(lambda n: True, lambda t, hook: fired.add(hook.name))])
    assert fired == set(model.hook_dict)


def test_hook_edit_changes_logits_and_is_used():
    model, inputs = llava()
    base = model(**inputs)
    edited = model.run_with_hooks(**inputs, fwd_hooks=[("blocks.0.hook_resid_post", lambda t, hook: t * 0.5)])
    assert (edited - base).abs().max() > 1e-3
    # the edit reaches the next layer exactly: resid_pre of block 1 == edited resid_post of block 0
    _, cache = model.run_with_cache(**inputs)
    seen = {}
    model.run_with_hooks(**inputs, fwd_hooks=[
        ("blocks.0.hook_resid_post", lambda t, hook: t * 0.5),
        ("blocks.1.hook_resid_pre", lambda t, hook: seen.setdefault("x", t.clone())),
    ])
    assert torch.allclose(seen["x"], cache["blocks.0.hook_resid_post"] * 0.5)


@pytest.mark.parametrize("name", ["vision.blocks.0.hook_resid_post", "projector.hook_out", "hook_image_embeds",
                                  "blocks.1.attn.hook_pattern", "blocks.0.attn.hook_v", "blocks.0.mlp.hook_post",
                                  "blocks.0.ln1.hook_normalized", "blocks.0.attn.hook_mask"])
def test_edits_at_every_stage_change_the_output(name):
    model, inputs = llava()
    base = model(**inputs)
    if name.endswith("hook_mask"):
        fn = lambda t, hook: t & (torch.rand(t.shape) > 0.5)  # noqa: E731
    elif name.endswith("hook_pattern"):
        fn = lambda t, hook: t.flip(-1)  # noqa: E731
    else:
        fn = lambda t, hook: t + 1.0  # noqa: E731
    edited = model.run_with_hooks(**inputs, fwd_hooks=[(name, fn)])
    assert (edited - base)[inputs["attention_mask"].bool()].abs().max() > 1e-4


def test_fast_and_explicit_attention_agree():
    model, inputs = llava()
    _, fast = model.run_with_cache(**inputs, names_filter=lambda n: n.endswith("hook_z") or n.endswith("resid_post"))
    _, slow = model.run_with_cache(**inputs, names_filter=lambda n: "hook_z" in n or "resid_post" in n or "pattern" in n)
    real = inputs["attention_mask"].bool()
    for key in fast.keys():
        if key.startswith("vision."):
            assert (fast[key] - slow[key]).abs().max().item() <= 1e-5, key
            continue
        assert (fast[key][real] - slow[key][real]).abs().max().item() <= 1e-5, key
    # the explicit pattern is a distribution over allowed keys and zero on padding
    pattern = slow["blocks.0.attn.hook_pattern"]  # [batch, head, q, k]
    row_sums = pattern.sum(-1).transpose(1, 2)[real]  # [real queries, head]
    assert (row_sums - 1).abs().max().item() <= 1e-5
    assert pattern.transpose(1, 3)[~real].abs().max().item() == 0  # no attention to padding keys


def test_hooks_are_removed_after_forward_raises():
    model, inputs = llava()

    def boom(t, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        model.run_with_hooks(**inputs, fwd_hooks=[("blocks.0.hook_resid_post", boom)])
    with pytest.raises(RuntimeError, match="boom"):
        with model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", boom)]):
            model(**inputs)
    assert all(not hp.fwd_hooks for hp in model.hook_points())
    model(**inputs)  # runs clean


def test_hooks_see_spans_and_query_positions_during_generation():
    model, inputs = llava()
    seen = []

    def record(t, hook):
        seen.append((hook.query_positions.clone(), hook.spans.seq_len, t.shape[1]))

    model.generate(**inputs, max_new_tokens=3, return_type="tokens", fwd_hooks=[("blocks.0.hook_resid_pre", record)])
    prompt_len = inputs["input_ids"].shape[1]
    assert seen[0][0].tolist() == list(range(prompt_len)) and seen[0][1] == prompt_len
    assert seen[1][0].tolist() == [prompt_len] and seen[1][1] == prompt_len + 1 and seen[1][2] == 1
    assert seen[2][0].tolist() == [prompt_len + 1] and seen[2][1] == prompt_len + 2


def _write_golden() -> None:  # python -m tests.test_hooks --update
    GOLDEN.mkdir(exist_ok=True)
    for family, build in FAMILIES.items():
        model, _ = build()
        (GOLDEN / f"hook_names_{family}.txt").write_text("\n".join(sorted(model.hook_dict)) + "\n")


if __name__ == "__main__" and "--update" in sys.argv:
    _write_golden()
