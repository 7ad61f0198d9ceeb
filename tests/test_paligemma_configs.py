"""PaliGemma configs: the converter refuses what it cannot run, and HF's tensors (in memory and as saved, legacy
layout included) map one to one onto ours for the tiny configs, a published PaliGemma 1 config and a PaliGemma 2
3B-shaped one built from published parts. Nothing runs a forward here (meta models); the numbers against HF are
tests/test_paligemma.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from converters import get_converter
from converters.base import UnsupportedConfigError
from hooked_vlm import HookedVLM
from tests import tiny_paligemma as tp

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("field,value,match", [("model_type", "gemma3_text", "supported: gemma2"),
                                               ("projection_dim", 16, "projection_dim"),
                                               ("image_token_index", 500, "outside the vocabulary")])
def test_unsupported_configs_are_refused(field, value, match):
    from transformers import PaliGemmaConfig

    text = tp.gemma2_text_config()
    top = dict(image_token_index=tp.IMAGE_TOKEN, projection_dim=32)
    if field == "model_type":
        text = dict(model_type="gemma3_text", vocab_size=tp.VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    else:
        top[field] = value
    hf_config = PaliGemmaConfig(text_config=text, vision_config=tp.siglip_vision_config(), **top)
    with pytest.raises(UnsupportedConfigError, match=match):
        get_converter("PaliGemmaForConditionalGeneration").make_config(hf_config)


@pytest.mark.parametrize("fields,match", [
    (dict(mask_policy="prefix"), "needs mask_policy_input"),
    (dict(attn_logit_softcap=0.0), "positive"),
    (dict(final_logit_softcap=-1.0), "positive"),
])
def test_bad_tower_fields_are_explained(fields, match):
    from hooked_vlm.config import TowerConfig

    with pytest.raises(ValueError, match=match):
        TowerConfig(n_layers=2, d_model=8, n_heads=2, d_mlp=16, **fields)


@pytest.mark.parametrize("text", ["gemma2", "gemma"])
def test_keymap_maps_hf_in_memory_and_saved_names_one_to_one(text, tmp_path):
    """HF's meta model's tensors (in-memory AND save_pretrained names) map through our KeyMap onto our parameters,
    shape for shape, all of ours covered; parameter counts equal."""
    from transformers.core_model_loading import revert_weight_conversion
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    text_config = tp.gemma2_text_config() if text == "gemma2" else tp.gemma_text_config()
    hf_config = transformers.PaliGemmaConfig(text_config=text_config, vision_config=tp.siglip_vision_config(),
                                             image_token_index=tp.IMAGE_TOKEN, projection_dim=32)
    converter = get_converter("PaliGemmaForConditionalGeneration")
    cfg = converter.make_config(hf_config)
    keymap = converter.make_keymap(cfg)
    with torch.device("meta"):
        ours = HookedVLM(cfg)
        hf = transformers.PaliGemmaForConditionalGeneration._from_config(hf_config)
    targets = {n: tuple(p.shape) for n, p in ours.named_parameters(remove_duplicate=False)}
    memory = {k: tuple(v.shape) for k, v in hf.state_dict().items()}
    saved = {k: tuple(v.shape) for k, v in
             revert_weight_conversion(hf, remove_tied_weights_from_state_dict(dict(hf.state_dict()), hf)).items()}
    assert any(k.startswith("language_model.model.") for k in saved)  # the legacy layout really is exercised
    tied = {"unembed.weight"} if cfg.tie_word_embeddings else set()
    for names in (memory, saved):
        mapped = {}
        for key, shape in names.items():
            ours_name = keymap.target(key)  # KeyError = a tensor the converter does not know
            if ours_name is None:
                continue
            assert targets[ours_name] == shape, (key, ours_name)
            assert ours_name not in mapped, f"{key} and {mapped.get(ours_name)} both map to {ours_name}"
            mapped[ours_name] = key
        assert set(targets) - set(mapped) <= tied
    assert sum(p.numel() for p in ours.parameters()) == hf.num_parameters()


def test_real_paligemma_448_config_maps_one_to_one_onto_hf(tmp_path):
    """A published PaliGemma 1 config (colpaligemma-3b-pt-448-base, tests/golden/paligemma_real_configs/SOURCES.md),
    legacy fields included, is accepted; HF's meta model maps 1:1 onto ours; what the converter reads from it."""
    import json

    from transformers.core_model_loading import revert_weight_conversion
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    raw = json.loads((GOLDEN / "paligemma_real_configs" / "vidore__colpali-v1.2-merged.json").read_text())
    assert raw["ignore_index"] == -100 and raw["vision_config"]["projector_hidden_act"] == "gelu_fast"
    hf_config = transformers.PaliGemmaConfig.from_dict(raw)
    converter = get_converter("PaliGemmaForConditionalGeneration")
    cfg = converter.make_config(hf_config)
    # pi0-style PaliGemma configs add text_config.hidden_activation (HF's Gemma reads hidden_act): accepted too
    with_act = dict(raw, text_config=dict(raw["text_config"], hidden_activation="gelu_pytorch_tanh"))
    assert converter.make_config(transformers.PaliGemmaConfig.from_dict(with_act)).text == cfg.text
    keymap = converter.make_keymap(cfg)
    with torch.device("meta"):
        ours = HookedVLM(cfg)
        hf = transformers.PaliGemmaForConditionalGeneration._from_config(hf_config)
    targets = {n: tuple(p.shape) for n, p in ours.named_parameters(remove_duplicate=False)}
    saved = {k: tuple(v.shape) for k, v in
             revert_weight_conversion(hf, remove_tied_weights_from_state_dict(dict(hf.state_dict()), hf)).items()}
    mapped = {keymap.target(k): shape for k, shape in saved.items() if keymap.target(k) is not None}
    assert all(targets[name] == shape for name, shape in mapped.items())
    assert set(targets) - set(mapped) <= {"unembed.weight"}
    assert sum(p.numel() for p in ours.parameters()) == hf.num_parameters()
    t = cfg.text
    assert (t.n_layers, t.d_model, t.n_heads, t.n_key_value_heads, t.d_head) == (18, 2048, 8, 1, 256)
    assert t.norm_placement == "pre" and t.attn_scale is None and t.position_offset == 1 and t.mask_policy == "prefix"
    assert t.embed_scale == 2048 ** 0.5 and cfg.d_vocab == 257216 and cfg.roles.image_token_id == 257152
    assert cfg.vision.grid_size == 32 and cfg.tie_word_embeddings  # 448 / 14: 1024 image tokens


# google/gemma-2-2b-it's config.json (the LM of PaliGemma 2 3B), as copied into a public ONNX-export script
# ("copy https://huggingface.co/google/gemma-2-2b-it/blob/main/config.json here"); PaliGemma 2 adds num_image_tokens
GEMMA2_2B = {"architectures": ["Gemma2ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
             "attn_logit_softcapping": 50.0, "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": [1, 107],
             "final_logit_softcapping": 30.0, "head_dim": 256, "hidden_act": "gelu_pytorch_tanh",
             "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 2304, "initializer_range": 0.02,
             "intermediate_size": 9216, "max_position_embeddings": 8192, "model_type": "gemma2",
             "num_attention_heads": 8, "num_hidden_layers": 26, "num_key_value_heads": 4, "pad_token_id": 0,
             "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "sliding_window": 4096,
             "torch_dtype": "bfloat16", "transformers_version": "4.42.4", "use_cache": True, "vocab_size": 256000}


def test_paligemma2_3b_shaped_config_from_published_parts():
    """NOT a published PaliGemma 2 file (none was found): gemma-2-2b-it's published LM config (with its hidden_act and
    cache_implementation) + the published 448-px SigLIP tower at 224 px, as PaliGemma 2 3B-224 combines them. The
    converter accepts the published Gemma 2 fields and reads the Gemma 2 settings; HF's meta model maps 1:1."""
    import json

    raw = json.loads((GOLDEN / "paligemma_real_configs" / "vidore__colpali-v1.2-merged.json").read_text())
    vision = dict(raw["vision_config"], image_size=224, num_image_tokens=256, projection_dim=2304)
    text = dict(GEMMA2_2B, vocab_size=257216, num_image_tokens=256)
    hf_config = transformers.PaliGemmaConfig(text_config=text, vision_config=vision, image_token_index=257152,
                                             projection_dim=2304, hidden_size=2304, ignore_index=-100)
    converter = get_converter("PaliGemmaForConditionalGeneration")
    cfg = converter.make_config(hf_config)
    t = cfg.text
    assert (t.n_layers, t.d_model, t.n_heads, t.n_key_value_heads, t.d_head, t.sliding_window) == (26, 2304, 8, 4, 256, 4096)
    assert (t.attn_logit_softcap, t.final_logit_softcap, t.attn_scale) == (50.0, 30.0, 256 ** -0.5)
    assert t.layer_types == ("sliding_attention", "full_attention") * 13 and t.norm_placement == "sandwich"
    keymap = converter.make_keymap(cfg)
    with torch.device("meta"):
        ours = HookedVLM(cfg)
        hf = transformers.PaliGemmaForConditionalGeneration._from_config(hf_config)
    mapped = {keymap.target(k) for k in hf.state_dict()} - {None}
    assert set(dict(ours.named_parameters(remove_duplicate=False))) - mapped <= {"unembed.weight"}
    assert sum(p.numel() for p in ours.parameters()) == hf.num_parameters()
