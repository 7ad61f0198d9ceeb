"""Idefics2 (Idefics2ForConditionalGeneration) against HF on a tiny random checkpoint (tests/tiny_idefics2.py).

Logits, residuals, both attention paths and greedy generate are tests/test_parity.py's CASES ("idefics2"); here: the
vision tower, the modality MLP and every perceiver-resampler block against HF, HF's patch rule, spans from the real
Idefics2Processor (latents, not patches; image splitting), and what the converter refuses. Tolerances: fp32, 1e-4
absolute (as tests/test_parity.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from converters import get_converter
from converters.base import UnsupportedConfigError
from hooked_vlm import HookedVLM
from tests import tiny
from tests import tiny_idefics2 as t2
from tests.tiny import max_abs_diff as _max, real_positions as _real
from tests.tiny_qwen_idefics import FAKE, IMAGE

ATOL = 1e-4
REAL = Path(__file__).parent / "real_configs" / "HuggingFaceM4__idefics2-8b.json"


def _image(seed: int, width: int, height: int) -> Image.Image:
    return tiny.pil_image(seed, 16).resize((width, height), Image.BILINEAR)


def _hf_image_path(hf, inputs):
    """HF's patch mask, vision hidden states, modality-MLP output and each perceiver layer's output (forward hooks)."""
    pv = inputs["pixel_values"].flatten(0, 1)
    real = (pv != 0).flatten(1).any(-1)
    pmask = inputs["pixel_attention_mask"].flatten(0, 1)[real]
    patch_mask = pmask.unfold(1, t2.PATCH, t2.PATCH).unfold(2, t2.PATCH, t2.PATCH).sum((-1, -2)) == t2.PATCH ** 2
    connector = hf.model.connector
    layers = []
    handles = [layer.register_forward_hook(lambda m, args, out: layers.append(out))
               for layer in connector.perceiver_resampler.layers]
    try:
        with torch.no_grad():
            vision = hf.model.vision_model(pixel_values=pv[real], patch_attention_mask=patch_mask, output_hidden_states=True)
            context = connector.modality_projection(vision.last_hidden_state)
            out = connector.perceiver_resampler(context=context, attention_mask=patch_mask.flatten(1))
    finally:
        for h in handles:
            h.remove()
    return patch_mask, vision, context, layers, out


def test_vision_tower_mlp_and_every_resampler_block_match_hf():
    b = t2.idefics2()
    patch_mask, vision, context, layers, out = _hf_image_path(b.hf, b.inputs)
    assert not patch_mask.all(), "the test batch must hold padded patches"
    _, cache = b.model.run_with_cache(**b.inputs, names_filter=lambda n: n.startswith(("vision.", "projector.")))
    keep = patch_mask.flatten(1)  # padded patches are junk on both sides (masked as keys only)
    assert _max(vision.hidden_states[0], cache["vision.hook_embed"]) <= ATOL
    for layer in range(b.model.cfg.vision.tower.n_layers):
        assert _max(vision.hidden_states[layer + 1], cache[f"vision.blocks.{layer}.hook_resid_post"], keep) <= ATOL
    assert _max(vision.last_hidden_state, cache["projector.hook_in"], keep) <= ATOL
    assert _max(context, cache["projector.hook_context"], keep) <= ATOL
    assert len(layers) == 2 and cache["projector.resampler.blocks.0.hook_resid_pre"].shape == (4, t2.N_LATENTS, 32)
    for i, ref in enumerate(layers):
        assert _max(ref, cache[f"projector.resampler.blocks.{i}.hook_resid_post"]) <= ATOL, i
    assert _max(out, cache["projector.hook_out"]) <= ATOL
    # the latents read the patches: the attention keys are [patches; latents], padded patches get no weight
    _, slow = b.model.run_with_cache(**b.inputs, names_filter=lambda n: n.endswith("resampler.blocks.1.attn.hook_pattern"))
    pattern = slow["projector.resampler.blocks.1.attn.hook_pattern"]  # [image, head, latent, patch + latent]
    assert pattern.shape == (4, 4, t2.N_LATENTS, keep.shape[1] + t2.N_LATENTS)
    assert pattern[..., : keep.shape[1]].transpose(1, 3)[~keep].abs().max().item() == 0
    assert (pattern.sum(-1) - 1).abs().max().item() <= 1e-5


def test_hf_patch_rule_every_pixel_real_is_what_the_parity_tests_test(monkeypatch):
    """HF Idefics2 counts a patch as real only when ALL its pixels are (Idefics3: any pixel). The test batch has
    partly covered patches, so with the other rule the image embeddings (and the logits) leave HF's."""
    from hooked_vlm.pipelines import idefics3 as p3
    from hooked_vlm.pipelines import resampled

    b = t2.idefics2()
    real = _real(b.inputs)
    with torch.no_grad():
        ref = b.hf(**b.inputs)
        image_embeds = ref.image_hidden_states.reshape(-1, 32)  # transformers 5.20: [image, latent, d]
        _, cache = b.model.run_with_cache(**b.inputs, names_filter="hook_image_embeds")
        assert _max(image_embeds, cache["hook_image_embeds"]) <= ATOL
        monkeypatch.setattr(resampled, "real_tiles", lambda *a, **k: p3.real_tiles(*a[:3], partial_patches="any"))
        logits, cache = b.model.run_with_cache(**b.inputs, names_filter="hook_image_embeds")
    # measured: image embeddings 3.4e-3 (after the resampler's final norm), logits 4.9e-4
    assert _max(image_embeds, cache["hook_image_embeds"]) > 10 * ATOL
    assert _max(ref.logits, logits, real) > ATOL


def _processor_model(splitting: bool):
    folder, hf = t2.make_idefics2(splitting=splitting) if splitting else t2.idefics2()[:2]
    return (HookedVLM.from_pretrained(str(folder)) if splitting else t2.idefics2().model), hf


@pytest.mark.parametrize("splitting", [False, True])
def test_spans_from_the_real_processor(splitting):
    """Idefics2Processor (offline): images of different sizes (resized to 7x12 and 5x9: partly covered patches), two
    prompts, left padding. Every image is <fake> + latents + <fake>; with do_image_splitting 5 sub-images (tiles 0-4)
    per image. Spans: image.{i}, latent == image, image_border == the fakes, no (row, col)."""
    model, hf = _processor_model(splitting)
    n_sub = 5 if splitting else 1
    assert model.cfg.extra["sub_images_per_image"] == n_sub
    images = [_image(0, 20, 13), _image(1, 9, 5), _image(2, 12, 12)]
    inputs = model.prepare_inputs(images=images, text=["w5 <image> w6 <image> w7", "w8 w9 <image> w10"],
                                  padding_side="left")
    assert inputs["pixel_values"].shape[:2] == (2, 2 * n_sub) and not inputs["pixel_attention_mask"].all()
    with torch.no_grad():
        ref = hf(**inputs).logits
    logits, cache = model.run_with_cache(**inputs, names_filter="hook_embed")
    assert _max(ref, logits, _real(inputs)) <= ATOL
    spans, ids = cache.spans, inputs["input_ids"]
    assert torch.equal(spans.mask("latent"), spans.mask("image")) and spans.mask("image").sum() == 3 * n_sub * t2.N_LATENTS
    assert torch.equal(spans.mask("image_border"), ids == FAKE) and not (spans.mask("text") & (ids == FAKE)).any()
    for b, n_images in ((0, 2), (1, 1)):
        assert spans.n_images(b) == n_images
        for i in range(n_images):
            pos = spans.positions(f"image.{i}", b)
            assert len(pos) == n_sub * t2.N_LATENTS and ids[b, pos].eq(IMAGE).all()
            grid = spans.grid[b, pos]
            assert grid[:, 0].eq(i).all() and grid[:, 2:].eq(-1).all()  # latents: image and tile, no (row, col)
            assert grid[:, 1].tolist() == [t for t in range(n_sub) for _ in range(t2.N_LATENTS)]
            assert ids[b, int(pos[0]) - 1] == FAKE and ids[b, int(pos[-1]) + 1] == FAKE
    shown = model.to_str_tokens(inputs, batch=1)
    assert shown.count("<latent 0>" if n_sub == 1 else "<latent 4:5>") == 1 and not any(s.startswith("<img") for s in shown)
    with pytest.raises(ValueError, match="perceiver-resampler latents .* no \\(row, col\\)"):
        spans.to_grid(torch.zeros(spans.seq_len), image=0, batch=0)


def test_prepare_inputs_refuses_a_splitting_setting_the_spans_would_not_follow():
    model = t2.idefics2().model
    with pytest.raises(ValueError, match="sub_images_per_image"):
        model.prepare_inputs(images=[_image(0, 8, 8)], text=["w5 <image>"], do_image_splitting=True)


def test_sub_images_that_do_not_make_whole_images_are_refused(monkeypatch):
    b = t2.idefics2()
    monkeypatch.setitem(b.model.cfg.extra, "sub_images_per_image", 5)
    with pytest.raises(ValueError, match="not a multiple of 5"):
        b.model(**b.inputs)


def test_latent_layouts_have_no_grid():
    from hooked_vlm.spans import ImageLayout

    assert ImageLayout(rows=0, cols=0, tiles=5, latents=64).n_tokens == 320
    with pytest.raises(ValueError, match="no patch grid"):
        ImageLayout(rows=8, cols=8, latents=64)


def _hf_config(**perceiver):
    from transformers import Idefics2Config

    return Idefics2Config(text_config=t2.mistral_text_config(), vision_config=t2.vision_config(),
                          perceiver_config=t2.perceiver_config(**perceiver), image_token_id=IMAGE)


def test_unsupported_configs_are_refused():
    from transformers import Idefics2Config

    convert = get_converter("Idefics2ForConditionalGeneration").make_config
    qwen = Idefics2Config(text_config=dict(t2.mistral_text_config(), model_type="qwen2"), vision_config=t2.vision_config(),
                          perceiver_config=t2.perceiver_config(), image_token_id=IMAGE)
    with pytest.raises(UnsupportedConfigError, match="qwen2"):
        convert(qwen)
    odd = _hf_config()
    odd.perceiver_config.hidden_size = 64
    with pytest.raises(UnsupportedConfigError, match="perceiver_config.hidden_size=64"):
        convert(odd)
    extra = _hf_config()
    extra.perceiver_config.qk_layer_norms_perceiver = True
    with pytest.raises(UnsupportedConfigError, match="qk_layer_norms_perceiver"):
        convert(extra)


def test_real_idefics2_8b_settings():
    """What the converter reads from idefics2-8b's config (tests/real_configs; its structure is checked against HF's
    meta model in tests/test_real_configs.py): 64 latents, 3 resampler blocks of 16 x 96 heads (GQA 4), Mistral 7B."""
    from transformers import AutoConfig

    cfg = get_converter("Idefics2ForConditionalGeneration").make_config(AutoConfig.for_model(**json.loads(REAL.read_text())))
    ex, r = cfg.projector.extra, cfg.projector.extra["resampler"]
    assert (ex["n_latents"], r.n_layers, r.n_heads, r.n_key_value_heads, r.d_head, r.d_model) == (64, 3, 16, 4, 96, 4096)
    assert (cfg.vision.tower.n_layers, cfg.vision.tower.d_model, cfg.vision.patch_size, cfg.vision.image_size) == (27, 1152, 14, 980)
    assert (cfg.text.n_layers, cfg.text.n_key_value_heads, cfg.text.sliding_window, cfg.d_vocab) == (32, 8, 4096, 32003)
    assert cfg.roles.image_token_id == 32001 and not cfg.tie_word_embeddings


def test_unprefixed_key_layout_loads(tmp_path):
    """Checkpoints saved by older code lack the leading "model." (text_model.*, vision_model.*, connector.*)."""
    from safetensors.torch import load_file, save_file

    b = t2.idefics2()
    tensors = load_file(str(b.folder / "model.safetensors"))
    assert any(k.startswith("model.connector.perceiver_resampler.") for k in tensors)
    (tmp_path / "config.json").write_text((b.folder / "config.json").read_text())
    save_file({k.removeprefix("model."): v for k, v in tensors.items()}, str(tmp_path / "model.safetensors"))
    other = HookedVLM.from_pretrained(str(tmp_path), processor=None)
    with torch.no_grad():
        assert _max(b.model(**b.inputs), other(**b.inputs)) == 0.0
