"""Config fields: no false refusals, what HF honours is implemented, and every refusal says why.

A converter refuses a config field only when it changes the numbers and is not implemented. Each accepted field
below was refused once (or appears in published configs): its test loads a checkpoint carrying it and compares with
HF's model loaded from the same folder. Each implemented field gets a parity test on both attention paths. Each
remaining refusal gets a test of its message (field, value, reason), and where the reason is that HF's own forward
cannot run the config, a test that it indeed cannot. Tolerance: fp32, 1e-4 absolute (as tests/test_parity.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from converters import get_converter
from converters.base import UnsupportedConfigError
from hooked_vlm import HookedVLM
from tests import tiny
from tests import tiny_next_pixtral as tnp
from tests import tiny_qwen_idefics as tqi

ATOL = 1e-4
REAL = Path(__file__).parent / "real_configs"


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def _resid(name: str) -> bool:
    return name.endswith("hook_resid_post") or name in ("hook_embed", "ln_final.hook_normalized")


def assert_parity(folder: Path, hf, inputs: dict) -> HookedVLM:
    """Logits and every residual equal HF's, on the default (SDPA) path and on the explicit (hook_pattern) path."""
    model = HookedVLM.from_pretrained(str(folder))
    real = inputs["attention_mask"].bool()
    with tiny.final_norm_input(hf) as last, torch.no_grad():
        ref = hf(**inputs, output_hidden_states=True)
        default_logits = model(**inputs)
        _, default_cache = model.run_with_cache(**inputs, names_filter=_resid)
        explicit_logits, explicit_cache = model.run_with_cache(
            **inputs, names_filter=lambda n: _resid(n) or n.endswith("attn.hook_pattern"))
    assert "blocks.0.attn.hook_pattern" not in default_cache and "blocks.0.attn.hook_pattern" in explicit_cache
    n = model.cfg.n_layers
    for path, logits, cache in (("default", default_logits, default_cache), ("explicit", explicit_logits, explicit_cache)):
        assert _max_diff(ref.logits[real], logits[real]) <= ATOL, path
        assert _max_diff(ref.hidden_states[0][real], cache["hook_embed"][real]) <= ATOL, path
        for layer in range(n):  # the last block against HF's final-norm input (hidden_states[n] is after it)
            hf_state = ref.hidden_states[layer + 1] if layer < n - 1 else last["x"]
            assert _max_diff(hf_state[real], cache[f"blocks.{layer}.hook_resid_post"][real]) <= ATOL, \
                f"{path} path, layer {layer}"
        assert _max_diff(ref.hidden_states[n][real], cache["ln_final.hook_normalized"][real]) <= ATOL, path
    return model


def rewrite_config(folder: Path, edit) -> dict:
    """Apply ``edit`` (dict -> None) to folder/config.json, as a hub config would differ from save_pretrained's."""
    path = folder / "config.json"
    conf = json.loads(path.read_text())
    edit(conf)
    path.write_text(json.dumps(conf))
    return conf


def hf_reloaded(hf, folder: Path):
    """HF's own model read back from the (edited) folder: HF accepts the config and computes with it."""
    return type(hf).from_pretrained(str(folder), dtype=torch.float32).eval()


def converter_for(hf_config):
    return get_converter(hf_config.architectures[0])


# ============================================================================ implemented: head_dim != hidden // heads
# HF's Qwen2 attention: head_dim = getattr(config, "head_dim", hidden_size // num_attention_heads); hidden 32, 4 heads
QWEN2_HEAD_DIM16 = dict(model_type="qwen2", num_key_value_heads=2, head_dim=16)


def _head_dim_cases():
    def llava():
        folder, hf = tiny.make_llava(text=tiny.llama_text_config(**QWEN2_HEAD_DIM16))
        return folder, hf, tiny.llava_batch(hf, [1, 1, 2], [3, 0, 0])

    def onevision():
        folder, hf = tnp.make_onevision(text=tnp.llama_text_config(**QWEN2_HEAD_DIM16))
        return folder, hf, tnp.anyres_batch(hf, [(8, 13), (15, 6), (20, 21)], per_item=[1, 2], pad_left=[4, 0],
                                            with_batch_num_images=True)

    def mistral3():  # Mistral-Small-3.1: head_dim 128, hidden_size 5120 // 32 heads = 160
        folder, hf = tnp.make_mistral3(text=tnp.llama_text_config(model_type="mistral", num_key_value_heads=2,
                                                                  sliding_window=4096, head_dim=16))
        return folder, hf, tnp.pixtral_batch(hf, [(16, 8), (8, 12), (4, 4)], per_item=[1, 2], pad_left=[3, 0], merge=2)

    return {"llava-qwen2": llava, "onevision-qwen2": onevision, "mistral3-mistral": mistral3}


HEAD_DIM_CASES = _head_dim_cases()


@pytest.mark.parametrize("case_id", list(HEAD_DIM_CASES))
def test_head_dim_wider_than_hidden_over_heads_matches_hf(case_id):
    folder, hf, inputs = HEAD_DIM_CASES[case_id]()
    assert hf.config.text_config.hidden_size // hf.config.text_config.num_attention_heads == 8
    model = assert_parity(folder, hf, inputs)
    assert model.cfg.d_head == 16
    # the TransformerLens weight views use d_head, not d_model // n_heads: recompute q and the attention output
    attn = model.blocks[1].attn
    assert attn.W_Q.shape == (4, 32, 16) and attn.W_K.shape == (2, 32, 16) and attn.W_O.shape == (4, 16, 32)
    with torch.no_grad():
        _, cache = model.run_with_cache(**inputs, names_filter=lambda n: n.startswith("blocks.1."))
    x = cache["blocks.1.ln1.hook_normalized"]
    q = torch.einsum("bpm,hmd->bphd", x, attn.W_Q)
    if attn.q_proj.bias is not None:
        q = q + attn.q_proj.bias.view(4, 16)
    assert _max_diff(q, cache["blocks.1.attn.hook_q"]) <= ATOL
    out = torch.einsum("bphd,hdm->bpm", cache["blocks.1.attn.hook_z"], attn.W_O) + attn.b_O
    assert _max_diff(out, cache["blocks.1.hook_attn_out"]) <= ATOL


# ============================================================================ accepted: real configs' extra fields
SMOLVLM_TEXT_EXTRAS = {  # from SmolVLM-256M-Instruct's / SmolVLM2's text_config (the original m4 code's settings)
    "is_llama_config": True, "neftune_noise_alpha": 0.0, "qk_layer_norms": False, "rope_interleaved": False,
    "use_resampler": False, "_flash_attn_2_enabled": True, "_name_or_path": "None", "pretraining_tp": 1,
    "perceiver_config": {"model_type": "vllama3", "resampler_depth": 6, "resampler_n_latents": 64},
    "transformers.js_config": {"kv_cache_dtype": {"fp16": "float16"}},
    # transformers 4.x PretrainedConfig attributes (every 4.x config.json has them)
    "add_cross_attention": False, "cross_attention_hidden_size": None, "decoder_start_token_id": None,
    "finetuning_task": None, "is_decoder": False, "prefix": None, "pruned_heads": {}, "sep_token_id": None,
    "task_specific_params": None, "tf_legacy_loss": False, "tie_encoder_decoder": False, "torchscript": False,
    "use_bfloat16": False,
}
SMOLVLM_VISION_EXTRAS = {"max_image_size": {"longest_edge": 512}, "size": {"longest_edge": 2048},
                         "use_base_siglip": True, "tie_word_embeddings": False, "is_decoder": False,
                         "add_cross_attention": False, "torchscript": False, "pruned_heads": {}}


def _smolvlm_config(text: dict | None = None, **top):
    from transformers import SmolVLMConfig

    return SmolVLMConfig(text_config=text or tiny.llama_text_config(), image_token_id=tqi.IMAGE, scale_factor=2,
                         vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                            num_attention_heads=4, image_size=8, patch_size=2),
                         architectures=["SmolVLMForConditionalGeneration"], **top)


def _smolvlm_edit(conf: dict) -> None:
    conf["text_config"].update(SMOLVLM_TEXT_EXTRAS, pixel_shuffle_factor=conf["scale_factor"])
    conf["vision_config"].update(SMOLVLM_VISION_EXTRAS)
    conf["vocab_size"] = conf["text_config"]["vocab_size"]  # SmolVLM-256M's legacy top-level copy
    conf["use_reentrant_checkpointing"] = False  # SmolVLM2
    conf["pad_token_id"] = 128002  # SmolVLM2: beyond the vocabulary (HF keeps it as the unused _pad_token_id)


@pytest.mark.parametrize("arch", ["idefics3", "smolvlm"])
def test_smolvlm_hub_fields_load_and_match_hf(arch):
    folder, hf = tqi.make_idefics(arch)
    rewrite_config(folder, _smolvlm_edit)
    hf = hf_reloaded(hf, folder)
    model = assert_parity(folder, hf, tqi.idefics_batch())
    assert model.cfg.d_vocab == tiny.VOCAB


def test_top_level_pad_token_id_is_not_what_hf_pads_with():
    """HF keeps SmolVLM2's top-level pad_token_id (128002, beyond the vocabulary) as ``_pad_token_id``; the embedding's
    padding_idx and generation's pad token both come from text_config.pad_token_id, and so do ours."""
    from transformers import GenerationConfig

    hf_config = _smolvlm_config(pad_token_id=128002)
    cfg = converter_for(hf_config).make_config(hf_config)
    assert GenerationConfig.from_model_config(hf_config).pad_token_id == tiny.PAD
    assert cfg.roles.pad_token_id == tiny.PAD


def test_llama_pretraining_tp_is_ignored_like_hf():
    """transformers 5 never reads pretraining_tp (4.x only split the matmuls into slices)."""
    folder, hf = tiny.make_llava(text=tiny.llama_text_config(pretraining_tp=2))
    assert json.loads((folder / "config.json").read_text())["text_config"]["pretraining_tp"] == 2
    assert_parity(folder, hf, tiny.llava_batch(hf, [1, 2], [3, 0]))


# ---------------------------------------------------------------------------- nested hub configs on tiny sizes
TEXT_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "pad_token_id", "bos_token_id", "eos_token_id")
VISION_SIZES = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "head_dim",
                "image_size", "patch_size", "projection_dim")
TOP_SIZES = ("image_token_index", "image_token_id", "image_grid_pinpoints", "scale_factor", "spatial_merge_size",
             "image_seq_length")


def _with_sizes(real: dict, tiny_level: dict, sizes: tuple[str, ...]) -> dict:
    out = {k: v for k, v in real.items() if k not in sizes}
    out.update({k: tiny_level[k] for k in sizes if k in tiny_level})
    return out


def nested_real_config(real: dict, tiny_conf: dict) -> dict:
    """The real hub config with the tiny checkpoint's sizes and image token id; every other field kept verbatim
    (legacy copies take the tiny value of the field HF reads)."""
    conf = _with_sizes({k: v for k, v in real.items() if not k.endswith("_config")}, tiny_conf, TOP_SIZES)
    conf["text_config"] = _with_sizes(real["text_config"], tiny_conf["text_config"], TEXT_SIZES)
    conf["vision_config"] = _with_sizes(real["vision_config"], tiny_conf["vision_config"], VISION_SIZES)
    if "vocab_size" in real:
        conf["vocab_size"] = tiny_conf["text_config"]["vocab_size"]
    if "pixel_shuffle_factor" in real["text_config"]:
        conf["text_config"]["pixel_shuffle_factor"] = tiny_conf["scale_factor"]
    return conf


NESTED_REAL = {  # real file -> (tiny builder, batch builder)
    "llava-hf__llava-1.5-7b-hf.json": (tiny.make_llava, lambda hf: tiny.llava_batch(hf, [1, 2], [3, 0])),
    "llava-hf__llava-v1.6-mistral-7b-hf.json": (
        tnp.make_llava_next, lambda hf: tnp.anyres_batch(hf, [(8, 13), (15, 6), (20, 21)], [1, 2], [4, 0])),
    "black-forest-labs__FLUX.2-dev__text_encoder.json": (  # a Mistral-Small-3.x Mistral3 config
        tnp.make_mistral3, lambda hf: tnp.pixtral_batch(hf, [(16, 8), (8, 12), (4, 4)], [1, 2], [3, 0], merge=2)),
    "HuggingFaceTB__SmolVLM2-500M-Video-Instruct.json": (lambda: tqi.make_idefics("smolvlm"),
                                                         lambda hf: tqi.idefics_batch()),
    "HuggingFaceTB__SmolVLM-256M-Instruct.json": (lambda: tqi.make_idefics("idefics3"), lambda hf: tqi.idefics_batch()),
}


# transformers 5.23 defaults Mistral3Config / JanusConfig.tie_word_embeddings to True, so a hub config that does not
# state it ties; HF's from_pretrained then finds embed_tokens and a different lm_head in the checkpoint and does NOT
# tie them (modeling_utils.tie_weights). The loader does the same (hooked_vlm/loading.py _untie_if_different).


@pytest.mark.parametrize("real_file", list(NESTED_REAL))
def test_nested_hub_configs_on_tiny_sizes_load_and_match_hf(real_file):
    real = json.loads((REAL / real_file).read_text())
    build, batch = NESTED_REAL[real_file]
    folder, hf = build()

    def edit(conf: dict) -> None:
        nested = nested_real_config(real, conf)
        conf.clear()
        conf.update(nested)

    rewrite_config(folder, edit)
    hf = hf_reloaded(hf, folder)
    assert_parity(folder, hf, batch(hf))


# ---------------------------------------------------------------------------- Qwen2 / 2.5-VL: flat hub configs
QWEN_TEXT_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                   "num_key_value_heads", "max_position_embeddings", "bos_token_id", "eos_token_id")
QWEN_TOP_IDS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
QWEN_VISION_SIZES = ("depth", "embed_dim", "hidden_size", "intermediate_size", "num_heads", "mlp_ratio", "out_hidden_size",
                     "patch_size", "spatial_merge_size", "temporal_patch_size", "window_size", "fullatt_block_indexes")


def flat_qwen_config(real: dict, tiny_conf: dict) -> dict:
    """The real (flat) hub config with the tiny checkpoint's sizes and token ids; every other field kept verbatim."""
    text, vision = tiny_conf["text_config"], tiny_conf["vision_config"]
    flat = {k: v for k, v in real.items() if k != "vision_config"}
    flat.update({k: text[k] for k in QWEN_TEXT_SIZES}, **{k: tiny_conf[k] for k in QWEN_TOP_IDS})
    flat["rope_scaling"] = dict(real["rope_scaling"], mrope_section=text["rope_parameters"]["mrope_section"])
    flat["vision_config"] = {k: v for k, v in real["vision_config"].items() if k not in QWEN_VISION_SIZES}
    flat["vision_config"].update({k: vision[k] for k in QWEN_VISION_SIZES if k in vision})
    for legacy, field in (("in_chans", "in_channels"), ("spatial_patch_size", "patch_size")):
        if legacy in flat["vision_config"]:
            flat["vision_config"][legacy] = vision[field]
    return flat


@pytest.mark.parametrize("real_file, version", [
    ("Qwen__Qwen2-VL-7B-Instruct.json", "2"),  # rope_scaling {"type": "mrope"}
    ("Qwen__Qwen2-VL-2B.json", "2"),  # tie_word_embeddings true
    ("Qwen__Qwen2-VL-2B-Instruct.json", "2"),
    ("Qwen__Qwen2.5-VL-3B-Instruct.json", "2.5"),  # max_window_layers 70 > 36 layers, sliding_window set, unused
    ("Qwen__Qwen2.5-VL-7B-Instruct.json", "2.5"),  # rope_scaling {"rope_type": "mrope"}
])
def test_flat_qwen_hub_configs_load_and_match_hf(real_file, version):
    real = json.loads((REAL / real_file).read_text())
    tt = "qwen2_vl_text" if version == "2" else "qwen2_5_vl_text"  # the tiny checkpoint ties as the real one does
    folder, hf = tqi.make_qwen(version, text=tqi.qwen_text_config(tt, tie_word_embeddings=real["tie_word_embeddings"]))

    def edit(conf: dict) -> None:
        flat = flat_qwen_config(real, conf)
        conf.clear()
        conf.update(flat)

    flat = rewrite_config(folder, edit)
    assert "text_config" not in flat and flat["rope_scaling"].keys() == real["rope_scaling"].keys()
    hf = hf_reloaded(hf, folder)
    assert hf.config.text_config.rope_parameters["rope_theta"] == real["rope_theta"]
    assert_parity(folder, hf, tqi.qwen_batch([[(1, 4, 6)], [(1, 6, 4), (1, 8, 8)]], [4, 0]))


def test_flat_qwen_top_level_head_dim_is_ignored_like_hf():
    """In a flat config head_dim is no Qwen2-VL text-config field: HF leaves it at the top level and never reads it."""
    folder, hf = tqi.make_qwen("2")
    rewrite_config(folder, lambda conf: conf.update(head_dim=64))
    hf = hf_reloaded(hf, folder)
    assert hf.config.head_dim == 64 and not hasattr(hf.config.text_config, "head_dim")
    model = assert_parity(folder, hf, tqi.qwen_batch([[(1, 4, 6)], [(1, 6, 4)]], [4, 0]))
    assert model.cfg.d_head == 8


@pytest.mark.parametrize("version", ["2", "2.5"])
def test_qwen_vl_text_head_dim_equal_to_hidden_over_heads_loads(version):
    tt = "qwen2_vl_text" if version == "2" else "qwen2_5_vl_text"
    folder, hf = tqi.make_qwen(version, text=tqi.qwen_text_config(tt, head_dim=8))
    assert json.loads((folder / "config.json").read_text())["text_config"]["head_dim"] == 8
    assert_parity(folder, hf, tqi.qwen_batch([[(1, 4, 6)], [(1, 6, 4)]], [4, 0]))


# ============================================================================ remaining refusals: field, value, why
def _refusal(hf_config) -> str:
    with pytest.raises(UnsupportedConfigError) as info:
        converter_for(hf_config).make_config(hf_config)
    return str(info.value)


@pytest.mark.parametrize("field, value, reason", [
    ("qk_layer_norms", True, "layer norms on q and k in the original code; HF's Llama has no q/k norm"),
    ("rope_interleaved", True, r"interleaved \(even, odd\) pairs; HF's Llama rotates the two halves"),
    ("use_resampler", True, "perceiver resampler"),
    ("pruned_heads", {"0": [1]}, "no longer prunes heads"),
])
def test_pinned_field_with_another_value_is_refused_with_its_reason(field, value, reason):
    message = _refusal(_smolvlm_config(tiny.llama_text_config(**{field: value})))
    assert f"{field}={value!r}" in message
    assert f"only {SMOLVLM_TEXT_EXTRAS[field]!r} is what HF computes" in message
    assert re.search(reason, message), message


def test_unknown_field_is_refused_naming_value_and_why():
    message = _refusal(_smolvlm_config(tiny.llama_text_config(use_fancy_norm=True)))
    assert "text_config (llama): this converter does not handle the config field(s) use_fancy_norm=True" in message
    assert "not a field of LlamaConfig, yet HF's model code may read it with getattr(config, 'use_fancy_norm')" in message


def test_legacy_copies_that_disagree_are_refused():
    message = _refusal(_smolvlm_config(vocab_size=tiny.VOCAB + 8))
    assert f"vocab_size={tiny.VOCAB + 8} differs from text_config.vocab_size={tiny.VOCAB}. HF reads only" in message
    message = _refusal(_smolvlm_config(tiny.llama_text_config(pixel_shuffle_factor=4)))
    assert "pixel_shuffle_factor=4 differs from scale_factor=2. HF reads only scale_factor" in message


def test_qwen2_per_layer_sliding_windows_are_refused():
    from transformers import LlavaConfig

    text = tiny.llama_text_config(model_type="qwen2", use_sliding_window=True, sliding_window=16, max_window_layers=1)
    message = _refusal(LlavaConfig(text_config=text, vision_config=tiny.clip_vision_config(),
                                   architectures=["LlavaForConditionalGeneration"]))
    assert "use_sliding_window=True with sliding_window=16 and max_window_layers=1" in message
    assert "sliding attention in layer(s) [1, 2]: HF masks keys more than 16 positions back in those layers" in message


def test_dynamic_rope_is_refused_with_why():
    from transformers import LlavaConfig

    text = tiny.llama_text_config(rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0})
    message = _refusal(LlavaConfig(text_config=text, vision_config=tiny.clip_vision_config(),
                                   architectures=["LlavaForConditionalGeneration"]))
    assert "rope_parameters.rope_type='dynamic'" in message and "rescale them with the sequence length" in message


@pytest.mark.parametrize("version", ["2", "2.5"])
@pytest.mark.parametrize("field, text, message", [
    ("head_dim", dict(head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]}),
     "head_dim=16 differs from hidden_size // num_attention_heads = 8"),
    ("mrope_section", dict(rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [1, 1, 1]}),
     r"mrope_section=[1, 1, 1] does not sum to head_dim // 2 = 4"),
])
def test_qwen_vl_text_fields_hf_cannot_run_are_refused(version, field, text, message):
    """The reason given is that HF's own forward cannot run the config: check that it indeed cannot."""
    tt = "qwen2_vl_text" if version == "2" else "qwen2_5_vl_text"
    folder, hf = tqi.make_qwen(version, text=tqi.qwen_text_config(tt, **text))
    refusal = _refusal(hf.config)
    assert message in refusal and "HF's own forward cannot run this config" in refusal
    with pytest.raises(RuntimeError), torch.no_grad():
        hf(**tqi.qwen_batch([[(1, 4, 6)]], [0]))


def test_quantized_checkpoint_is_refused_with_why():
    from transformers import LlavaConfig

    quant = {"quant_method": "awq", "bits": 4, "group_size": 128}
    message = _refusal(LlavaConfig(text_config=tiny.llama_text_config(), vision_config=tiny.clip_vision_config(),
                                   architectures=["LlavaForConditionalGeneration"], quantization_config=quant))
    assert f"quantization_config={quant!r} (the checkpoint's weights are quantized" in message


def test_head_dim_wider_than_hidden_over_heads_generates_like_hf():
    """The KV cache holds d_head-wide keys and values too: greedy tokens equal HF's."""
    folder, hf, inputs = HEAD_DIM_CASES["llava-qwen2"]()
    model = HookedVLM.from_pretrained(str(folder))
    with torch.no_grad():
        ref = hf.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert torch.equal(ref, model.generate(**inputs, max_new_tokens=6, return_type="tokens"))


@pytest.mark.parametrize("family", ["mistral3", "janus"])
def test_default_tied_config_with_its_own_lm_head_matches_hf(family):
    from tests import tiny_native

    if family == "mistral3":
        folder, hf = tnp.make_mistral3(tie_word_embeddings=False)
        inputs = tnp.pixtral_batch(hf, [(16, 8), (8, 12), (4, 4)], [1, 2], [3, 0], merge=2)
    else:
        folder, hf = tiny_native.make_janus(tie_word_embeddings=False)
        inputs = tiny_native.janus_batch(hf, [1, 2], [3, 0])
    rewrite_config(folder, lambda conf: conf.pop("tie_word_embeddings"))  # as hub configs that do not state it
    hf = hf_reloaded(hf, folder)
    assert hf.config.tie_word_embeddings and hf.lm_head.weight is not hf.get_input_embeddings().weight
    with torch.no_grad():
        ref = hf(**inputs).logits
        ours = HookedVLM.from_pretrained(str(folder))(**inputs)
    real = inputs["attention_mask"].bool()
    assert _max_diff(ref[real], ours[real]) <= ATOL
