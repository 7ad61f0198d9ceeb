"""Qwen3-VL (Qwen3VLForConditionalGeneration) against HF on a tiny random checkpoint (tests/tiny_qwen3vl.py).

Tolerances: fp32, 1e-4 absolute on logits / residuals / vision states (as tests/test_parity.py), 1e-5 between our
fast (SDPA) and explicit attention paths. The batch has two items, left padding (3 pads on item 1) and three images
of different sizes (4 x 6, 4 x 4 and 6 x 8 patches: the 4 x 4 position table is resized to each).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from converters import get_converter
from converters.base import UnsupportedConfigError
from hooked_vlm import HookedVLM
from tests import tiny
from tests import tiny_qwen3vl as tq
from tests.tiny_qwen_idefics import IMAGE, VEND, VIDEO, VSTART
from tests.tiny import max_abs_diff as _max, pattern_hooks as _pattern_hooks, real_positions as _real  # the shared comparison helpers

ATOL = 1e-4
REAL_CONFIGS = sorted((Path(__file__).parent / "real_configs").glob("Qwen__Qwen3-VL-*.json"))


@functools.lru_cache(maxsize=None)
def built():
    folder, hf = tq.make_qwen3vl()
    return folder, hf, HookedVLM.from_pretrained(str(folder)), tq.batch()


def test_logits_match_hf_on_default_and_explicit_paths():
    _, hf, model, inputs = built()
    real = _real(inputs)
    assert inputs["image_grid_thw"][:, 1:].unique(dim=0).shape[0] == 3, "images of three different sizes"
    with torch.no_grad():
        ref = hf(**inputs).logits
        fast = model(**inputs)
        explicit = model.run_with_hooks(**inputs, fwd_hooks=_pattern_hooks(model))
    assert torch.isfinite(fast).all()
    assert _max(ref, fast, real) <= ATOL
    assert _max(ref, explicit, real) <= ATOL


def test_every_residual_matches_hf_hidden_states():
    """HF records each layer's output BEFORE its DeepStack addition: that is our hook_resid_post; the sum enters
    the next block (hook_resid_pre = hook_resid_post + the DeepStack feature at the image positions)."""
    _, hf, model, inputs = built()
    real = _real(inputs)
    with tiny.final_norm_input(hf) as last, torch.no_grad():
        ref = hf(**inputs, output_hidden_states=True).hidden_states
        _, cache = model.run_with_cache(**inputs)
    n = model.cfg.n_layers
    assert len(ref) == n + 1 and model.cfg.text.deepstack_layers < n  # the last block adds no DeepStack feature
    assert _max(ref[0], cache["hook_embed"], real) <= ATOL
    for layer in range(n):  # the last block against HF's final-norm input (hidden_states[n] is after the norm)
        hf_state = ref[layer + 1] if layer < n - 1 else last["x"]
        assert _max(hf_state, cache[f"blocks.{layer}.hook_resid_post"], real) <= ATOL, f"layer {layer}"
    assert _max(ref[n], cache["ln_final.hook_normalized"], real) <= ATOL  # HF's last entry is after the final norm
    is_image = inputs["input_ids"] == IMAGE
    for layer in tq.DEEPSTACK:
        added = cache[f"blocks.{layer + 1}.hook_resid_pre"] - cache[f"blocks.{layer}.hook_resid_post"]
        assert _max(added[is_image], cache[f"blocks.{layer}.hook_deepstack"]) <= 1e-6
        assert added[~is_image].abs().max().item() == 0.0
        assert cache[f"blocks.{layer}.hook_deepstack"].shape == (int(is_image.sum()), model.cfg.d_model)


def test_vision_layers_mergers_and_deepstack_match_hf():
    _, hf, model, inputs = built()
    grid = inputs["image_grid_thw"]
    with torch.no_grad():
        ref = hf.model.visual(inputs["pixel_values"], grid_thw=grid, output_hidden_states=True)
        _, cache = model.run_with_cache(**inputs, names_filter=lambda n: n.startswith(("vision.", "projector.")))
    n_layers = model.cfg.vision.tower.n_layers
    assert len(ref.hidden_states) == n_layers + 1
    assert _max(ref.hidden_states[0], cache["vision.hook_embed"][0]) <= ATOL  # patches + interpolated positions
    for layer in range(n_layers):
        assert _max(ref.hidden_states[layer + 1], cache[f"vision.blocks.{layer}.hook_resid_post"][0]) <= ATOL
    assert _max(ref.pooler_output, cache["projector.hook_out"][0]) <= ATOL
    assert len(ref.deepstack_features) == len(tq.DEEPSTACK)
    for i, feat in enumerate(ref.deepstack_features):
        assert _max(feat, cache[f"projector.deepstack.{i}.hook_out"][0]) <= ATOL, f"deepstack {i}"


def test_position_embedding_interpolation_equals_hf_gather():
    """Our F.interpolate resize of the position table == HF's gather indices and weights, for odd grid sizes too."""
    from transformers.vision_utils import get_vision_interpolation_indices_and_weights

    _, _, model, _ = built()
    grid = torch.tensor([[1, 4, 6], [1, 2, 2], [2, 6, 10], [1, 8, 4]])
    idx, w = get_vision_interpolation_indices_and_weights(grid, 4, mode="bilinear", align_corners=True,
                                                          spatial_merge_size=2)
    ref = (model.vision.pos_embed(idx) * w[:, :, None]).sum(1)
    with torch.no_grad():
        assert _max(ref, model.vision.interpolated_pos_embed(grid)) <= 1e-6


def test_fast_and_explicit_paths_agree():
    _, _, model, inputs = built()
    real = _real(inputs)
    keep = lambda n: n.endswith(("hook_z", "hook_resid_post"))  # noqa: E731
    _, fast = model.run_with_cache(**inputs, names_filter=keep)
    _, slow = model.run_with_cache(**inputs, names_filter=lambda n: keep(n) or n.endswith("hook_pattern"))
    for key in fast.keys():
        if key.startswith("blocks."):
            assert _max(fast[key], slow[key], real) <= 1e-5, key


def test_mrope_positions_match_hf_get_rope_index():
    from hooked_vlm.model import KVCache
    from hooked_vlm.positions import mrope_positions

    _, hf, model, inputs = built()
    ref, ref_deltas = hf.model.get_rope_index(inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
                                              image_grid_thw=inputs["image_grid_thw"],
                                              attention_mask=inputs["attention_mask"])
    cache = KVCache(model.cfg.n_layers)
    ours = mrope_positions(model, inputs["input_ids"], inputs["attention_mask"], None, cache,
                           {"image_grid_thw": inputs["image_grid_thw"]})
    assert torch.equal(ours, ref)
    assert torch.equal(cache.extra["rope_deltas"], ref_deltas)
    assert (ours[1] != ours[2]).any(), "the batch must exercise 2-D image positions"


def test_interleaved_mrope_matches_hf_rotary_and_differs_from_chunked():
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRotaryEmbedding

    _, hf, model, inputs = built()
    positions = torch.randint(0, 50, (3, 2, 7))
    ref_cos, ref_sin = Qwen3VLTextRotaryEmbedding(hf.config.text_config)(torch.zeros(1, dtype=torch.float32), positions)
    cos, sin = model.rotary(positions, torch.float32)
    assert _max(ref_cos, cos[:, :, 0]) <= 1e-6 and _max(ref_sin, sin[:, :, 0]) <= 1e-6
    from hooked_vlm.components.rope import mrope_select

    freqs = positions[..., None].float() * model.rotary.inv_freq
    chunked = torch.cat([mrope_select(freqs, [4, 2, 2])] * 2, -1).cos()
    assert _max(chunked, cos[:, :, 0]) > 1e-2  # the interleaving matters on this config


@pytest.mark.parametrize("use_kv_cache", [True, False])
def test_greedy_generate_matches_hf(use_kv_cache):
    _, hf, model, inputs = built()
    with torch.no_grad():
        ref = hf.generate(**inputs, max_new_tokens=10, do_sample=False)
    ours = model.generate(**inputs, max_new_tokens=10, return_type="tokens", use_kv_cache=use_kv_cache)
    assert ref.shape[1] == inputs["input_ids"].shape[1] + 10
    assert torch.equal(ref, ours)


@pytest.mark.parametrize("layer", tq.DEEPSTACK)
def test_ablating_hook_deepstack_equals_hf_with_that_feature_zeroed(layer, monkeypatch):
    from transformers.models.qwen3_vl import modeling_qwen3_vl as mq

    _, hf, model, inputs = built()
    real = _real(inputs)
    with torch.no_grad():
        base = model(**inputs)
        ours = model.run_with_hooks(**inputs, fwd_hooks=[(f"blocks.{layer}.hook_deepstack", lambda t, hook: t * 0)])
    original = mq.Qwen3VLTextModel._deepstack_process
    calls = []

    def zeroed(self, hidden_states, visual_pos_masks, visual_embeds):
        calls.append(len(calls))
        if calls[-1] == layer:  # HF calls it once per DeepStack layer, in layer order
            visual_embeds = torch.zeros_like(visual_embeds)
        return original(self, hidden_states, visual_pos_masks, visual_embeds)

    monkeypatch.setattr(mq.Qwen3VLTextModel, "_deepstack_process", zeroed)
    with torch.no_grad():
        ref = hf(**inputs).logits
    assert len(calls) == len(tq.DEEPSTACK)
    assert _max(ref, ours, real) <= ATOL
    assert _max(base, ours, real) > 1e-3  # the ablation changed the output


def test_text_only_prompt_matches_hf():
    _, hf, model, _ = built()
    ids = torch.tensor([[1, 5, 6, 7, 8], [1, 9, 10, 11, 12]])
    with torch.no_grad():
        assert _max(hf(input_ids=ids).logits, model(input_ids=ids)) <= ATOL


def test_videos_are_refused_with_a_clear_error():
    _, _, model, inputs = built()
    with pytest.raises(ValueError, match="video inputs are not supported"):
        model(**inputs, pixel_values_videos=torch.zeros(4, 24), video_grid_thw=torch.tensor([[1, 2, 2]]))
    ids = inputs["input_ids"].clone()
    ids[0, -1] = VIDEO
    with pytest.raises(ValueError, match="video"):
        model(**dict(inputs, input_ids=ids))


def test_spans_mark_images_markers_and_grids():
    _, _, model, inputs = built()
    _, cache = model.run_with_cache(**inputs, names_filter="hook_embed")
    spans, ids = cache.spans, inputs["input_ids"]
    for b, item in enumerate(tq.GRIDS):
        assert spans.n_images(b) == len(item)
        boi, eoi = spans.positions("boi", b), spans.positions("eoi", b)
        assert ids[b, boi].eq(VSTART).all() and ids[b, eoi].eq(VEND).all() and len(boi) == len(eoi) == len(item)
        for i, (_, h, w) in enumerate(item):
            pos = spans.positions(f"image.{i}", b)
            assert pos.tolist() == list(range(int(boi[i]) + 1, int(eoi[i])))
            g = spans.grid[b, pos]
            assert g[:, 0].eq(i).all()
            assert g[:, 2].tolist() == [r for r in range(h // 2) for _ in range(w // 2)]
            assert g[:, 3].tolist() == list(range(w // 2)) * (h // 2)
    assert spans.positions("image", 1).numel() == 4 + 12


def _processor_folder():
    """The tiny checkpoint plus a WordLevel tokenizer and the real Qwen2VLImageProcessor (PIL) saved next to it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    folder, hf, _, _ = built()
    vocab = {f"w{i}": i for i in range(100)}
    specials = {"<|image_pad|>": IMAGE, "<|video_pad|>": VIDEO, "<|vision_start|>": VSTART, "<|vision_end|>": VEND}
    vocab.update(specials)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w3"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w3", pad_token="w0", eos_token="w2", padding_side="left",
                            additional_special_tokens=list(specials)).save_pretrained(folder)
    Qwen2VLImageProcessorPil(patch_size=2, merge_size=2, temporal_patch_size=2, min_pixels=4 * 4,
                             max_pixels=16 * 16).save_pretrained(folder)
    return folder, hf


def test_prepare_inputs_from_the_real_image_processor_match_hf():
    from PIL import Image

    folder, hf = _processor_folder()
    model = HookedVLM.from_pretrained(str(folder))
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((12, 20), (16, 8), (8, 8))]
    prompts = ["w5 <|vision_start|><|image_pad|><|vision_end|> w6 w7",
               "w8 <|vision_start|><|image_pad|><|vision_end|> w9 <|vision_start|><|image_pad|><|vision_end|> w4"]
    inputs = model.prepare_inputs(images=images, text=prompts)
    with torch.no_grad():
        ref = hf(**inputs).logits
        logits, cache = model.run_with_cache(**inputs, names_filter="hook_embed")
    assert _max(ref, logits, _real(inputs)) <= ATOL
    n_tokens = (inputs["image_grid_thw"].prod(-1) // 4).tolist()
    assert [cache.spans.positions(f"image.{i}", 1).numel() for i in range(2)] == n_tokens[1:]


# ---------------------------------------------------------------- real configs
@pytest.mark.parametrize("path", REAL_CONFIGS, ids=[p.stem for p in REAL_CONFIGS])
def test_real_config_settings_and_legacy_names(path):
    """tests/test_real_configs.py maps every tensor of HF's meta model for these configs onto ours (in-memory AND
    save_pretrained names, shapes, nothing unused or unset, parameter counts). Here, through the same loader walk:
    the `visual.*` legacy prefix (written by hand: Qwen3-VL's save_pretrained writes the in-memory names) maps too,
    and the settings read from the config are Qwen3-VL's."""
    from hooked_vlm.inspect import meta_model
    from hooked_vlm.loading import converter_for
    from hooked_vlm.tensor_mapping import map_checkpoint_tensors
    from tests.test_real_configs import _problems, config_folder, hf_meta_model, saved_names

    hf_config, converter, cfg = converter_for(config_folder(path))
    saved = saved_names(hf_meta_model(hf_config))
    legacy = {f"visual.{k[len('model.visual.'):]}" if k.startswith("model.visual.") else k: s for k, s in saved.items()}
    assert any(k.startswith("visual.") for k in legacy)
    mapping = map_checkpoint_tensors(meta_model(cfg), converter.make_keymap(cfg), legacy)
    assert _problems(mapping) == {} and len(mapping.plan) + len(mapping.ignored) == len(legacy)
    tc = hf_config.text_config
    assert (cfg.d_head, cfg.text.qk_norm, cfg.text.deepstack_layers) == (
        tc.head_dim, "RMS", len(hf_config.vision_config.deepstack_visual_indexes))
    assert cfg.text.rope_parameters["mrope_interleaved"] is True


def test_real_4b_settings():
    """head_dim 128 while 2560 / 32 = 80; DeepStack from ViT blocks 5, 11, 17; 48 x 48 position table; tied."""
    from transformers import AutoConfig

    path = Path(__file__).parent / "real_configs" / "Qwen__Qwen3-VL-4B-Instruct.json"
    cfg = get_converter("Qwen3VLForConditionalGeneration").make_config(
        AutoConfig.for_model(**json.loads(path.read_text())))
    assert (cfg.d_head, cfg.n_heads, cfg.n_key_value_heads, cfg.d_model) == (128, 32, 8, 2560)
    assert cfg.text.rope_parameters["mrope_section"] == [24, 20, 20]
    assert cfg.vision.extra["deepstack_visual_indexes"] == [5, 11, 17] and cfg.text.deepstack_layers == 3
    assert cfg.vision.extra["num_position_embeddings"] == 2304 and cfg.tie_word_embeddings


@pytest.mark.parametrize("where,fields,match", [
    ("vision", {"deepstack_visual_indexes": [1, 0]}, "deepstack_visual_indexes"),
    ("vision", {"deepstack_visual_indexes": [0, 5]}, "deepstack_visual_indexes"),
    ("text", {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [4, 2, 3]}}, "mrope_section"),
    ("text", {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0, "mrope_section": [4, 2, 2]}},
     "rope_type"),
])
def test_bad_configs_are_refused(where, fields, match):
    text = tq.text_config(**fields) if where == "text" else None
    vision = tq.vision_config(**fields) if where == "vision" else None
    with pytest.raises(UnsupportedConfigError, match=match):
        get_converter("Qwen3VLForConditionalGeneration").make_config(tq.hf_config(text=text, vision=vision))
