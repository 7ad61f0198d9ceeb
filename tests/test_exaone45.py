"""EXAONE 4.5 (Exaone4_5_ForConditionalGeneration) against HF on the tiny random checkpoint of tests/tiny_exaone45.py,
beyond tests/test_parity.py's CASES line: every vision layer (both attention paths) and the merger, what each new part
changes (the window, NoPE global layers, post-sublayer norms, grouped vision heads), the processor stand-in's layout,
refusals.

Tolerances: fp32, 1e-4 absolute (as tests/test_parity.py). The batch: two items, 3 left pads on item 1, three images of
different sizes (4 x 6, 4 x 4, 8 x 8 patches; the 8 x 8 one spans 4 windows), prompts longer than 2 x the window.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from converters import get_converter
from converters.base import UnsupportedConfigError
from tests import tiny_exaone45 as te
from tests.tiny import max_abs_diff as _max, pattern_hooks as _pattern_hooks, real_positions as _real

ATOL = 1e-4


def _built():
    b = te.exaone45()
    return b.hf, b.model, b.inputs


@pytest.mark.parametrize("path", ["fast", "explicit"])
def test_every_vision_layer_and_the_merger_match_hf(path):
    from transformers.vision_utils import get_vision_window_index

    hf, model, inputs = _built()
    grid = inputs["image_grid_thw"]
    hooks = [(f"vision.blocks.{l}.attn.hook_pattern", lambda t, hook: t)
             for l in range(model.cfg.vision.tower.n_layers)] if path == "explicit" else []
    store = {}

    def keep(t, hook):
        store[hook.name] = t.detach().clone()
        return t

    n_layers = model.cfg.vision.tower.n_layers
    names = ["vision.hook_embed", "projector.hook_out"] + [f"vision.blocks.{l}.hook_resid_post" for l in range(n_layers)]
    with torch.no_grad():
        ref = hf.model.visual(inputs["pixel_values"], grid_thw=grid, output_hidden_states=True)
        model.run_with_hooks(**inputs, fwd_hooks=hooks + [(n, keep) for n in names])
    order, cu = get_vision_window_index(grid, 2, 8, 2)  # HF runs the blocks window by window; ours keep input order
    assert len(cu) - 1 > len(grid), "the batch must hold an image with several windows"
    assert model.cfg.vision.tower.n_key_value_heads < model.cfg.vision.tower.n_heads

    def hf_order(x):
        return x.reshape(-1, 4, x.shape[-1])[order].reshape(-1, x.shape[-1])

    assert len(ref.hidden_states) == n_layers + 1
    assert _max(ref.hidden_states[0], hf_order(store["vision.hook_embed"][0])) <= ATOL
    for layer in range(n_layers):
        assert _max(ref.hidden_states[layer + 1], hf_order(store[f"vision.blocks.{layer}.hook_resid_post"][0])) <= ATOL
    assert _max(ref.pooler_output, store["projector.hook_out"]) <= ATOL


@pytest.mark.parametrize("change", ["no_window", "rope_everywhere", "pre_norm"])
def test_each_exaone4_part_changes_the_logits(change):
    """The parity tests would catch each part ignored: the same weights with the window off, with RoPE on the global
    layers too, or with the norms moved to the sublayer inputs are far from HF (a fresh conversion is edited, not the
    shared one)."""
    from hooked_vlm import HookedVLM
    from hooked_vlm.components.layer_rotary import build_rotary
    from hooked_vlm.hook_points import HookPoint

    b = te.exaone45()
    model = HookedVLM.from_pretrained(str(b.folder), processor=None)
    cfg, inputs = model.cfg.text, b.inputs
    assert int(inputs["attention_mask"].sum(1).min()) > 2 * cfg.sliding_window
    if change == "no_window":
        cfg.sliding_window = None
    elif change == "rope_everywhere":
        rope = cfg.layer_rope_parameters["sliding_attention"]
        cfg.layer_rope_parameters = {"sliding_attention": rope, "full_attention": rope}
        model.rotary = build_rotary(cfg)
        for block in model.blocks:
            block.attn.use_rope = True
            for name in ("hook_rot_q", "hook_rot_k"):  # a NoPE layer has no rotary hooks: give it some
                if not hasattr(block.attn, name):
                    setattr(block.attn, name, HookPoint())
    else:
        for block in model.blocks:
            block.post_sublayer_norm = False
    with torch.no_grad():
        ref = b.hf(**inputs).logits
        changed = model(**inputs)
    assert _max(ref, changed, _real(inputs)) > 10 * ATOL


def test_marker_spans_come_from_the_config():
    """vision_start / vision_end_token_id (hub config fields HF's model never reads) name the boi / eoi spans."""
    _, model, inputs = _built()
    _, cache = model.run_with_cache(**inputs, names_filter="hook_embed")
    ids = inputs["input_ids"]
    for b in range(ids.shape[0]):
        boi = cache.spans.positions("boi", b)
        assert boi.tolist() == (ids[b] == model.cfg.roles.boi_token_id).nonzero().flatten().tolist()
        assert len(cache.spans.positions("eoi", b)) == len(boi) > 0


def test_global_layers_have_no_rotary_hooks_and_sliding_layers_do():
    _, model, _ = _built()
    for layer, kind in enumerate(model.cfg.text.layer_types):
        assert hasattr(model.blocks[layer].attn, "hook_rot_q") == (kind == "sliding_attention"), layer


def test_processor_stand_in_lays_images_out_as_hf_processor(tmp_path):
    """Our stand-in (tokenizer + Qwen2VLImageProcessorPil, converters/_qwen_inputs.py) gives HF's Exaone4_5_Processor's
    placeholder count (t * h * w / merge**2 per image) and no mm_token_type_ids; its output runs through both models."""
    from PIL import Image
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from converters._qwen_inputs import QwenVLInputs
    from tests.tiny_qwen_idefics import IMAGE

    hf, model, _ = _built()
    vocab = {f"w{i}": i for i in range(IMAGE)} | {"<|image_pad|>": IMAGE}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w3"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="w0", padding_side="left")
    tokenizer.add_tokens(["<|image_pad|>"], special_tokens=True)  # the expanded run has no spaces between copies
    images = Qwen2VLImageProcessorPil(patch_size=2, temporal_patch_size=2, merge_size=2, min_pixels=16, max_pixels=256,
                                      image_mean=[0.5] * 3, image_std=[0.5] * 3)
    proc = QwenVLInputs(tokenizer, images, token_types=False)
    rng = np.random.default_rng(0)
    pics = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((8, 12), (16, 16))]
    out = proc(images=pics, text=["w5 <|image_pad|> w6 w7", "w8 <|image_pad|> w9"], padding=True)
    assert "mm_token_type_ids" not in out
    counts = (out["input_ids"] == IMAGE).sum(1)
    assert counts.tolist() == (out["image_grid_thw"].prod(-1) // 4).tolist()
    real = out["attention_mask"].bool()
    with torch.no_grad():
        assert _max(hf(**out).logits, model(**out), real) <= ATOL


def test_videos_are_refused_by_name():
    _, model, inputs = _built()
    with pytest.raises(ValueError, match="video inputs are not supported for EXAONE 4.5"):
        model(**inputs, pixel_values_videos=torch.zeros(4, 24), video_grid_thw=torch.tensor([[1, 2, 2]]))


def test_refusals_name_the_field():
    hf, _, _ = _built()
    convert = get_converter("Exaone4_5_ForConditionalGeneration").make_config
    bad = copy.deepcopy(hf.config)
    bad.text_config.attention_dropout = 0.0
    bad.text_config.some_new_field = 3
    with pytest.raises(UnsupportedConfigError, match="some_new_field"):
        convert(bad)
    bad = copy.deepcopy(hf.config)
    bad.text_config.sliding_window = None
    with pytest.raises(UnsupportedConfigError, match="sliding_window=None"):
        convert(bad)
    bad = copy.deepcopy(hf.config)
    bad.vision_config.out_hidden_size = 48
    with pytest.raises(UnsupportedConfigError, match="out_hidden_size"):
        convert(bad)
    bad = copy.deepcopy(hf.config)
    bad.text_config.model_type = "llama"
    with pytest.raises(UnsupportedConfigError, match="llama"):
        convert(bad)


def test_all_global_layers_without_window_rotate_everywhere():
    """sliding_window=None with every layer full_attention: HF rotates every layer (no NoPE)."""
    hf, _, _ = _built()
    bad = copy.deepcopy(hf.config)
    bad.text_config.sliding_window = None
    bad.text_config.layer_types = ["full_attention"] * bad.text_config.num_hidden_layers
    text = get_converter("Exaone4_5_ForConditionalGeneration").make_config(bad).text
    assert text.sliding_window is None and text.layer_rope_parameters is None and text.layer_uses_rope(1)
