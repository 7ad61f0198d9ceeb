"""The LLaVA-like declarations (converters/llava_like.py): every vision layer and the image embeddings against HF,
parts reused by model_type, refusals by name.

Logits / LM residuals / both attention paths / greedy generation with and without the KV cache are
tests/test_parity.py's (CASES vipllava, granite-vision, lighton-ocr, next-video-clip, deepseek-vl); golden hook names
and every-hook-fires are tests/test_hooks.py's.
"""

from __future__ import annotations

import functools

import pytest
import torch

from converters import get_converter
from converters.base import UnsupportedConfigError
from tests import tiny
from tests import tiny_llava_like as tll
from tests.test_parity import built, ours_run

ATOL = 1e-4
#: case -> the attribute of HF's inner model holding the vision tower
TOWERS = {"vipllava": "vision_tower", "granite-vision": "vision_tower", "lighton-ocr": "vision_encoder",
          "next-video-clip": "vision_tower", "deepseek-vl": "vision_model"}


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@functools.lru_cache(maxsize=None)
def _hf_vision(case_id: str):
    """(HF's vision hidden states, its last_hidden_state, its image features) with the tower called exactly as HF's
    own forward calls it (the arguments captured by a pre-hook)."""
    b = built(case_id)
    tower = getattr(b.hf.model, TOWERS[case_id])
    seen = {}
    handle = tower.register_forward_pre_hook(lambda m, args, kwargs: seen.update(args=args, kwargs=dict(kwargs)),
                                             with_kwargs=True)
    try:
        with torch.no_grad():
            out = b.hf(**b.inputs)
    finally:
        handle.remove()
    kwargs = {k: v for k, v in seen["kwargs"].items() if k == "image_sizes"}
    with torch.no_grad():
        states = tower(*seen["args"], output_hidden_states=True, **kwargs)
    return states.hidden_states, states.last_hidden_state, out.image_hidden_states


@pytest.mark.parametrize("path", ["fast", "explicit"])
@pytest.mark.parametrize("case_id", sorted(TOWERS))
def test_every_vision_layer_and_the_image_embeds_match_hf(case_id, path):
    model = built(case_id).model
    ref, last, embeds = _hf_vision(case_id)
    _, cache, calls = ours_run(case_id, "padded", path)
    assert calls["explicit" if path == "fast" else "fast"] == 0
    first = "vision.ln_pre.hook_normalized" if getattr(model.vision, "ln_pre", None) is not None else "vision.hook_embed"
    assert _max_diff(ref[0], cache[first]) <= ATOL
    n = model.cfg.vision.tower.n_layers
    assert len(ref) == n + 1
    for layer in range(n):
        assert _max_diff(ref[layer + 1], cache[f"vision.blocks.{layer}.hook_resid_post"]) <= ATOL, f"vision layer {layer}"
    if "vision.ln_post.hook_normalized" in model.hook_dict:  # DeepSeek-VL reads the tower after post_layernorm
        with torch.no_grad():
            _, post = model.run_with_cache(**built(case_id).inputs, names_filter="vision.ln_post.hook_normalized")
        assert _max_diff(last, post["vision.ln_post.hook_normalized"]) <= ATOL
    embeds = torch.cat(list(embeds)) if isinstance(embeds, (list, tuple)) else embeds
    assert _max_diff(embeds.reshape(-1, model.cfg.d_model), cache["hook_image_embeds"]) <= ATOL


def test_the_cases_exercise_what_they_claim():
    """Granite's scalars away from 1, VipLlava's layers concatenated with its projector norm, DeepSeek-VL's post-norm
    tower, LightOnOcr's Qwen3 q/k norms, LLaVA-NeXT-Video's pooler tensors in the checkpoint (and not loaded)."""
    g = built("granite-vision").model.cfg
    assert (g.text.embedding_multiplier, g.text.residual_multiplier, g.text.attn_scale) == (3.0, 0.5, 0.25)
    assert g.vision.feature_layers == (-3, -1) and g.extra["parts"]["lm"] == "granite"
    v = built("vipllava").model
    assert len(v.cfg.vision.feature_layers) == 3 and v.projector.ln is not None and v.cfg.vision.feature_select == "default"
    assert built("deepseek-vl").model.cfg.vision.kind == "vit_post_norm"
    assert built("lighton-ocr").model.cfg.text.qk_norm == "RMS"
    video = built("next-video-clip")
    assert any(k.startswith("model.vision_resampler.") for k in video.hf.state_dict())


def test_video_inputs_are_refused_with_the_reason():
    b = built("next-video-clip")
    with pytest.raises(ValueError, match="pixel_values_videos: video inputs are not converted"):
        b.model(**b.inputs, pixel_values_videos=torch.zeros(1, 2, 3, 8, 8))


def test_a_qwen3_lm_inside_llava_brings_its_qk_norm_rules():
    """The LM part is found by text_config.model_type, its key rules with it: a LLaVA with a Qwen3 LM (q/k norms)
    loads with nothing unused and equals HF."""
    b = tiny.llava(text=tiny.llama_text_config(model_type="qwen3", num_key_value_heads=2, head_dim=8))
    assert b.model.cfg.text.qk_norm == "RMS" and b.model.cfg.extra["parts"]["lm"] == "qwen3"
    real = b.inputs["attention_mask"].bool()
    with torch.no_grad():
        assert _max_diff(b.hf(**b.inputs).logits[real], b.model(**b.inputs)[real]) <= ATOL


@pytest.mark.parametrize("architecture, edit, message", [
    ("VipLlavaForConditionalGeneration", {"vision_config": {"model_type": "siglip_vision_model"}},
     "vision_config.model_type='siglip_vision_model' is a tower this converter does not build; supported: "
     "clip_vision_model"),
    ("LightOnOcrForConditionalGeneration", {"text_config": {"model_type": "gemma"}},
     "text_config.model_type='gemma': a language model this converter does not build; supported: granite, llama, "
     "mistral, qwen2, qwen3"),
    ("DeepseekVLForConditionalGeneration", {"text_config": {"model_type": "llama", "embedding_multiplier": 2.0}},
     "embedding_multiplier=2.0"),
])
def test_parts_refuse_by_name(architecture, edit, message):
    import transformers

    cls = getattr(transformers, architecture.replace("ForConditionalGeneration", "Config"))
    config = cls(**edit)
    with pytest.raises(UnsupportedConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        get_converter(architecture).make_config(config)
