"""Bad input gets a clear error that says what was wrong and how to fix it."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from converters import supported_architectures
from hooked_vlm import HookedVLM
from tests import tiny


def base():
    """(folder, model, inputs): the shared 2-layer tiny LLaVA of tests/test_hooks.py, with its own batch."""
    b = tiny.llava(text=tiny.llama_text_config(num_hidden_layers=2, num_key_value_heads=2),
                   vision=tiny.clip_vision_config(num_hidden_layers=2), images=(1, 1), pads=(2, 0))
    return b.folder, b.model, b.inputs


def _variant(edit_config=None, edit_weights=None) -> Path:
    folder, _, _ = base()
    out = Path(tempfile.mkdtemp(prefix="bad_"))
    for f in folder.iterdir():
        shutil.copy(f, out / f.name)
    if edit_config is not None:
        cfg = json.loads((out / "config.json").read_text())
        edit_config(cfg)
        (out / "config.json").write_text(json.dumps(cfg))
    if edit_weights is not None:
        tensors = load_file(str(out / "model.safetensors"))
        edit_weights(tensors)
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def test_image_placeholder_count_mismatch():
    _, model, inputs = base()
    with pytest.raises(ValueError, match=r"holds 32 image tokens but the images give 16 image embeddings.*one image per image placeholder"):
        model(**dict(inputs, pixel_values=inputs["pixel_values"][:1]))
    with pytest.raises(ValueError, match=r"image tokens but no pixel_values"):
        model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])


def test_wrong_pixel_values_shape():
    _, model, inputs = base()
    with pytest.raises(ValueError, match=r"pixel_values has shape \(2, 3, 16, 16\); this model's vision tower expects \[n_images, 3, 8, 8\]"):
        model(**dict(inputs, pixel_values=torch.zeros(2, 3, 16, 16)))


def test_unknown_hook_name_suggests_the_nearest():
    _, model, inputs = base()
    with pytest.raises(KeyError, match=r"no hook point named 'blocks.1.hook_resid_psot'.*Did you mean 'blocks.1.hook_resid_post'"):
        model.run_with_hooks(**inputs, fwd_hooks=[("blocks.1.hook_resid_psot", lambda t, hook: t)])
    with pytest.raises(KeyError, match=r"Did you mean 'blocks.0.attn.hook_pattern'"):
        model.add_hook("blocks.0.attn.hook_patern", lambda t, hook: t)
    with pytest.raises(KeyError, match=r"no hook point named"):
        model.run_with_cache(**inputs, names_filter=["blocks.0.hook_resid_post", "blocks.0.hook_rsid_mid"])
    assert all(not hp.fwd_hooks for hp in model.hook_points())


def test_hook_returning_wrong_shape():
    _, model, inputs = base()

    def shrink(t, hook):
        return t[:, :-1]

    with pytest.raises(ValueError, match=r"hook shrink on 'blocks.0.hook_resid_post' returned shape \(2, 25, 32\); expected the same shape as its input \(2, 26, 32\)"):
        model.run_with_hooks(**inputs, fwd_hooks=[("blocks.0.hook_resid_post", shrink)])
    with pytest.raises(TypeError, match=r"must return a torch.Tensor or None"):
        model.run_with_hooks(**inputs, fwd_hooks=[("blocks.0.hook_resid_post", lambda t, hook: "oops")])
    assert all(not hp.fwd_hooks for hp in model.hook_points())


def test_unsupported_architecture_lists_supported():
    folder = _variant(edit_config=lambda c: c.update(architectures=["FooVLMForConditionalGeneration"]))
    with pytest.raises(ValueError, match=r"'FooVLMForConditionalGeneration' is not supported. Supported architectures: .*LlavaForConditionalGeneration"):
        HookedVLM.from_pretrained(str(folder))
    assert "LlavaForConditionalGeneration" in supported_architectures()


def test_unhandled_config_field_is_refused_by_name():
    folder = _variant(edit_config=lambda c: c["text_config"].update(use_fancy_norm=True))
    with pytest.raises(ValueError, match=r"does not handle the config field\(s\) use_fancy_norm=True"):
        HookedVLM.from_pretrained(str(folder))
    folder = _variant(edit_config=lambda c: c["text_config"].update(rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}))
    with pytest.raises(ValueError, match=r"rope_type 'dynamic' is not supported"):
        HookedVLM.from_pretrained(str(folder))


def test_checkpoint_with_missing_tensor():
    folder = _variant(edit_weights=lambda t: t.pop("language_model.model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ValueError, match=r"1 parameter\(s\) got no tensor from the checkpoint.*blocks.1.mlp.up_proj.weight"):
        HookedVLM.from_pretrained(str(folder))


def test_checkpoint_with_extra_tensor():
    folder = _variant(edit_weights=lambda t: t.update({"language_model.model.layers.1.mlp.extra_proj.weight": torch.zeros(2, 2)}))
    with pytest.raises(ValueError, match=r"1 checkpoint tensor\(s\) .* are not used by the converter: language_model.model.layers.1.mlp.extra_proj.weight"):
        HookedVLM.from_pretrained(str(folder))


def test_checkpoint_tensor_with_wrong_shape():
    folder = _variant(edit_config=lambda c: c["text_config"].update(intermediate_size=48))
    with pytest.raises(ValueError, match=r"checkpoint tensor '.*mlp\..*' has shape \((64, 32|32, 64)\); blocks.\d.mlp.\w+.weight expects \((48, 32|32, 48)\) \(config.json does not match"):
        HookedVLM.from_pretrained(str(folder))


def test_truncated_safetensors_file():
    folder = _variant()
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match=r"truncated or corrupt"):
        HookedVLM.from_pretrained(str(folder))


def test_unknown_forward_input():
    _, model, inputs = base()
    with pytest.raises(TypeError, match=r"unexpected input\(s\) \['image_grid_thw'\].*takes input_ids, pixel_values"):
        model(**inputs, image_grid_thw=torch.ones(1, 3))


def test_not_a_checkpoint_folder():
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        HookedVLM.from_pretrained(tempfile.mkdtemp())


LLAVA15_HUB_CONFIG = {  # llava-hf/llava-1.5-7b-hf config.json as published (transformers 4.36 era)
    "architectures": ["LlavaForConditionalGeneration"], "ignore_index": -100, "image_token_index": 32000,
    "pad_token_id": 32001, "projector_hidden_act": "gelu", "tie_word_embeddings": False, "torch_dtype": "float16",
    "text_config": {"_name_or_path": "lmsys/vicuna-7b-v1.5", "architectures": ["LlamaForCausalLM"],
                    "max_position_embeddings": 4096, "model_type": "llama", "rms_norm_eps": 1e-05,
                    "torch_dtype": "float16", "vocab_size": 32064},
    "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096, "model_type": "clip_vision_model",
                      "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14, "projection_dim": 768,
                      "vocab_size": 32000},
    "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "vocab_size": 32064,
}


def test_llava15_hub_config_converts_and_a_conflicting_legacy_vocab_size_is_refused():
    from transformers import LlavaConfig

    from converters import get_converter

    convert = get_converter("LlavaForConditionalGeneration").make_config
    cfg = convert(LlavaConfig(**LLAVA15_HUB_CONFIG))
    assert (cfg.n_layers, cfg.d_model, cfg.d_vocab, cfg.roles.image_token_id) == (32, 4096, 32064, 32000)
    assert (cfg.vision.tower.n_layers, cfg.vision.grid_size, cfg.vision.feature_layers) == (24, 24, (-2,))
    with pytest.raises(ValueError, match=r"vocab_size=32000 differs from text_config.vocab_size=32064"):
        convert(LlavaConfig(**dict(LLAVA15_HUB_CONFIG, vocab_size=32000)))
