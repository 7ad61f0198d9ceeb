"""SAM's ViT (windowed / global attention with decomposed relative positions, conv neck) and DeepSeek-VL-Hybrid's two
towers: every layer of both towers, each tower's output, the merged high-res features and the image embeddings
against HF, on both attention paths; the config options the tiny case exercises really act; refusals by name.

Logits / LM residuals / fast == explicit / greedy generation with and without the KV cache are tests/test_parity.py's
(CASES deepseek-vl-hybrid); golden hook names and every-hook-fires are tests/test_hooks.py's.
"""

from __future__ import annotations

import functools

import pytest
import torch

from converters import get_converter
from converters.base import UnsupportedConfigError
from hooked_vlm.components.rel_pos_attention import RelPosAttention
from tests.test_parity import built

ATOL = 1e-4
CASE = "deepseek-vl-hybrid"
EXTRA = ("vision.ln_post.hook_normalized", "vision.high_res.neck.hook_out", "projector.hook_high_res",
         "projector.hook_high_res_in", "projector.hook_high_res_global", "hook_image_embeds")


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@functools.lru_cache(maxsize=None)
def _hf():
    """HF's two towers on the case's images: (low-res outputs, high-res outputs, merged high-res features, image
    features)."""
    b = built(CASE)
    px, high = b.inputs["pixel_values"], b.inputs["high_res_pixel_values"]
    m = b.hf.model
    with torch.no_grad():
        low = m.vision_model(px, output_hidden_states=True)
        hi = m.high_res_vision_model(high, output_hidden_states=True)
        merged = m.get_high_res_image_features(high).last_hidden_state
        feats = m.get_image_features(px, high).pooler_output
    return low, hi, merged, feats


@functools.lru_cache(maxsize=None)
def _ours(path: str):
    """(cache, the explicit-path flags the SAM mixers saw) with every residual and the EXTRA hooks; "explicit" also
    hooks every hook_pattern (both towers and the LM)."""
    b = built(CASE)
    seen = []
    original = RelPosAttention._explicit

    def spy(self):
        seen.append(original(self))
        return seen[-1]

    def names(n):
        return "hook_resid" in n or n.endswith("hook_embed") or n in EXTRA or (path == "explicit" and n.endswith("hook_pattern"))

    RelPosAttention._explicit = spy
    try:
        with torch.no_grad():
            _, cache = b.model.run_with_cache(**b.inputs, names_filter=names)
    finally:
        RelPosAttention._explicit = original
    return cache, tuple(seen)


def _grid(x: torch.Tensor) -> torch.Tensor:
    """HF's SAM layouts [image, rows, cols, d] / neck [image, c, rows, cols] -> ours [image, rows * cols, d]."""
    return x.flatten(1, 2)


@pytest.mark.parametrize("path", ["fast", "explicit"])
def test_every_layer_of_both_towers_and_the_image_embeds_match_hf(path):
    model = built(CASE).model
    low, hi, merged, feats = _hf()
    cache, flags = _ours(path)
    assert len(flags) == model.cfg.vision.extra["high_res"].tower.n_layers and set(flags) == {path == "explicit"}
    # low-res SigLIP tower: embeddings, every layer, post_layernorm
    n_low = model.cfg.vision.tower.n_layers
    assert len(low.hidden_states) == n_low + 1
    assert _max_diff(low.hidden_states[0], cache["vision.hook_embed"]) <= ATOL
    for layer in range(n_low):
        assert _max_diff(low.hidden_states[layer + 1], cache[f"vision.blocks.{layer}.hook_resid_post"]) <= ATOL, layer
    assert _max_diff(low.last_hidden_state, cache["vision.ln_post.hook_normalized"]) <= ATOL
    # high-res SAM tower: embeddings (patches + absolute positions), every layer, the neck
    n_high = model.cfg.vision.extra["high_res"].tower.n_layers
    assert len(hi.hidden_states) == n_high + 1
    assert _max_diff(_grid(hi.hidden_states[0]), cache["vision.high_res.hook_embed"]) <= ATOL
    for layer in range(n_high):
        ours = cache[f"vision.high_res.blocks.{layer}.hook_resid_post"]
        assert _max_diff(_grid(hi.hidden_states[layer + 1]), ours) <= ATOL, f"SAM layer {layer}"
    neck = hi.last_hidden_state.permute(0, 2, 3, 1)  # channels first -> last
    assert _max_diff(_grid(neck), cache["vision.high_res.neck.hook_out"]) <= ATOL
    # the projector's inputs are the towers' outputs; its merged high-res features and output equal HF's
    assert torch.equal(cache["projector.hook_high_res_in"], cache["vision.high_res.neck.hook_out"])
    g = 1 + built(CASE).hf.config.high_res_vision_config.global_attn_indexes[0]
    assert _max_diff(_grid(hi.hidden_states[g]), cache["projector.hook_high_res_global"]) <= ATOL
    assert _max_diff(merged, cache["projector.hook_high_res"]) <= ATOL
    assert _max_diff(feats.reshape(-1, model.cfg.d_model), cache["hook_image_embeds"]) <= ATOL
    if path == "explicit":  # the pattern of a windowed layer is per window: 8 x 8 grid padded to 9 x 9 -> 9 windows
        assert cache["vision.high_res.blocks.0.attn.hook_pattern"].shape == (3 * 9, 2, 9, 9)
        assert cache["vision.high_res.blocks.1.attn.hook_pattern"].shape == (3, 2, 64, 64)
        for layer, block in enumerate(model.vision.high_res.blocks):  # what memory.py sizes inspect's report by
            assert block.attn.pattern_shape(3) == cache[f"vision.high_res.blocks.{layer}.attn.hook_pattern"].shape


def test_the_case_exercises_what_it_claims(monkeypatch):
    """Padded windows (8 % 3 != 0), a global layer between windowed ones, relative positions, absolute positions
    and the hybrid's alpha are all away from zero, and each changes the image embeddings when removed."""
    b = built(CASE)
    model = b.model
    high = model.cfg.vision.extra["high_res"]
    rp = high.tower.rel_pos_attention
    assert rp.grid % rp.window and high.tower.layer_types == ("window_rel_pos_attention", "global_rel_pos_attention",
                                                              "window_rel_pos_attention")
    _, _, _, feats = _hf()
    feats = feats.reshape(-1, model.cfg.d_model)
    tower = model.vision.high_res
    for name, param in [("rel_pos", tower.blocks[0].attn.rel_pos_h), ("rel_pos_global", tower.blocks[1].attn.rel_pos_w),
                        ("abs_pos", tower.pos_embed), ("alpha", model.projector.high_res_alpha)]:
        assert param.abs().min() > 0, name
        with torch.no_grad():
            saved = param.detach().clone()
            param.zero_()
            try:
                _, cache = model.run_with_cache(**b.inputs, names_filter="hook_image_embeds")
            finally:
                param.copy_(saved)
        assert _max_diff(feats, cache["hook_image_embeds"]) > 10 * ATOL, name


def test_an_edit_in_a_window_reaches_only_that_window():
    """hook_v of the windowed layer 0 is per window: zeroing window 0's values changes the first SAM layer's output
    in window 0's patches (rows 0-2, cols 0-2 of image 0) and nowhere else."""
    b = built(CASE)
    model = b.model
    names = "vision.high_res.blocks.0.hook_attn_out"
    _, base = model.run_with_cache(**b.inputs, names_filter=names)

    def zero_first_window(v, hook):
        v = v.clone()
        v[0] = 0
        return v

    with model.hooks(fwd_hooks=[("vision.high_res.blocks.0.attn.hook_v", zero_first_window)]):
        _, edited = model.run_with_cache(**b.inputs, names_filter=names)
    changed = (edited[names] - base[names]).abs().amax(-1) > 0  # [image, 64]
    expected = torch.zeros(3, 8, 8, dtype=torch.bool)
    expected[0, :3, :3] = True
    assert torch.equal(changed, expected.flatten(1))


def test_missing_high_res_pixels_are_refused_with_the_fix():
    b = built(CASE)
    inputs = {k: v for k, v in b.inputs.items() if k != "high_res_pixel_values"}
    with pytest.raises(ValueError, match=r"pass high_res_pixel_values \[3, 3, 32, 32\]"):
        b.model(**inputs)


@pytest.mark.parametrize("edit, message", [
    ({"high_res_vision_config": {"model_type": "sam_vision_model", "global_attn_indexes": []}},
     "global_attn_indexes is empty"),
    ({"high_res_vision_config": {"model_type": "sam_vision_model", "global_attn_indexes": [12]}},
     r"global_attn_indexes \[12\] are not layers of a 12-layer tower"),
    ({"high_res_vision_config": {"model_type": "sam_vision_model", "num_pos_feats": 64, "use_abs_pos": False,
                                 "attention_dropout": 0.1}}, None),  # accepted: prompt-encoder / training fields
    ({"text_config": {"model_type": "gemma"}}, "text_config.model_type='gemma'"),
])
def test_hybrid_config_checks(edit, message):
    from transformers import DeepseekVLHybridConfig

    config = DeepseekVLHybridConfig(**edit)
    convert = get_converter("DeepseekVLHybridForConditionalGeneration").make_config
    if message is None:
        cfg = convert(config)
        assert cfg.vision.extra["high_res"].extra["abs_pos"] is False
    else:
        with pytest.raises(UnsupportedConfigError, match=message):
            convert(config)


# ---------------------------------------------------------------- GOT-OCR2 (SAM ViT alone)
@pytest.mark.parametrize("path", ["fast", "explicit"])
def test_got_ocr2_every_sam_layer_the_neck_and_the_image_embeds_match_hf(path):
    b = built("got-ocr2")
    model = b.model
    with torch.no_grad():
        ref = b.hf.model.vision_tower(b.inputs["pixel_values"], output_hidden_states=True)
        feats = b.hf.model.get_image_features(b.inputs["pixel_values"]).pooler_output

    def names(n):
        return ("hook_resid_post" in n or n in ("vision.hook_embed", "vision.neck.hook_out", "hook_image_embeds")
                or (path == "explicit" and n.endswith("hook_pattern")))

    with torch.no_grad():
        _, cache = model.run_with_cache(**b.inputs, names_filter=names)
    n = model.cfg.vision.tower.n_layers
    assert len(ref.hidden_states) == n + 1
    assert _max_diff(_grid(ref.hidden_states[0]), cache["vision.hook_embed"]) <= ATOL
    for layer in range(n):
        assert _max_diff(_grid(ref.hidden_states[layer + 1]), cache[f"vision.blocks.{layer}.hook_resid_post"]) <= ATOL
    assert _max_diff(_grid(ref.last_hidden_state.permute(0, 2, 3, 1)), cache["vision.neck.hook_out"]) <= ATOL
    assert _max_diff(feats.reshape(-1, model.cfg.d_model), cache["hook_image_embeds"]) <= ATOL
    assert any(k.endswith("hook_pattern") for k in cache.keys()) == (path == "explicit")


def test_got_ocr2_spans_hold_the_markers_and_a_grid_per_image():
    """<img> / </img> (ids from the processor's tokenizer) are the boi / eoi spans; the 9 pads of each image are its
    3 x 3 grid, row-major."""
    b = built("got-ocr2")
    roles = b.model.cfg.roles
    tok = b.model.processor.tokenizer
    assert (roles.boi_token_id, roles.eoi_token_id) == tuple(tok.convert_tokens_to_ids(["<img>", "</img>"]))
    spans = b.model.spans_for(b.inputs["input_ids"], b.inputs["attention_mask"],
                              b.model.image_layouts(b.inputs["pixel_values"], {}))
    ids = b.inputs["input_ids"]
    for item in range(2):
        boi, eoi = spans.positions("boi", item), spans.positions("eoi", item)
        assert ids[item, boi].tolist() == [roles.boi_token_id] and ids[item, eoi].tolist() == [roles.eoi_token_id]
        assert spans.positions("image", item).tolist() == list(range(int(boi) + 1, int(eoi)))
        values = torch.zeros(ids.shape[1])
        values[spans.positions("image", item)] = torch.arange(9.0)
        assert spans.to_grid(values, batch=item).tolist() == torch.arange(9.0).view(3, 3).tolist()


@pytest.mark.parametrize("options", [{"use_rel_pos": False, "use_abs_pos": False}, {"window_size": 0}],
                         ids=["no-rel-no-abs-pos", "window-0-all-global"])
def test_got_ocr2_sam_options_match_hf(options):
    """The SAM options the shared case keeps on: no relative / absolute positions (no tables, no hook_rel_pos), and
    window_size 0 (HF then makes every layer global). Image embeddings and logits against HF."""
    from hooked_vlm import HookedVLM
    from tests import tiny_sam

    folder, hf = tiny_sam.make_got_ocr2(seed=2, **options)
    model = HookedVLM.from_pretrained(str(folder), processor=None)
    inputs = built("got-ocr2").inputs
    kinds = set(model.cfg.vision.tower.layer_types)
    assert kinds == ({"global_rel_pos_attention"} if "window_size" in options else
                     {"global_rel_pos_attention", "window_rel_pos_attention"})
    has_rel = "use_rel_pos" not in options
    assert any(n.endswith("hook_rel_pos") for n in model.hook_dict) == has_rel
    assert (model.vision.pos_embed is not None) == ("use_abs_pos" not in options)
    with torch.no_grad():
        feats = hf.model.get_image_features(inputs["pixel_values"]).pooler_output
        ref = hf(**inputs).logits
        logits, cache = model.run_with_cache(**inputs, names_filter="hook_image_embeds")
    real = inputs["attention_mask"].bool()
    assert _max_diff(feats.reshape(-1, model.cfg.d_model), cache["hook_image_embeds"]) <= ATOL
    assert _max_diff(ref[real], logits[real]) <= ATOL


# ---------------------------------------------------------------- full size, on the meta device
@pytest.mark.parametrize("architecture", ["DeepseekVLHybridForConditionalGeneration", "GotOcr2ForConditionalGeneration"])
def test_full_size_default_configs_match_hf_structure(architecture, tmp_path):
    """No verbatim published config.json of either family was found (docs/families.md says so); HF's default configs
    are the published sizes (DeepseekVLHybridConfig: "deepseek-community/deepseek-vl-7b-chat style", SAM-B 1024 px,
    window 14 -> 64 x 64 grid padded to 70 x 70, global layers 2 / 5 / 8 / 11; GotOcr2Config: GOT-OCR-2.0's SAM and
    Qwen2-0.5B sizes). The structural check of tests/test_real_configs.py on them: every HF tensor (in memory and as
    saved) maps onto one of ours with its shape, nothing unused or unset, parameter counts equal."""
    import json

    import transformers

    from tests.test_real_configs import _problems, structure

    config = getattr(transformers, architecture.replace("ForConditionalGeneration", "Config"))()
    config.architectures = [architecture]
    path = tmp_path / f"{architecture}.json"
    path.write_text(json.dumps(config.to_dict()))
    s = structure(path)
    assert _problems(s.in_memory) == {} and _problems(s.saved) == {}
    assert s.n_parameters == s.hf_parameters - s.not_converted
    assert s.n_parameters > 5e8 if architecture.startswith("Got") else s.n_parameters > 6e9
