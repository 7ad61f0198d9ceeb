"""Qwen2-VL / Qwen2.5-VL (M-RoPE, packed windowed ViT) and Idefics3 / SmolVLM (tiles, markers): parity and spans.

Logits / residuals / greedy generate parity for these families runs in tests/test_parity.py (CASES);
here: vision towers vs HF, M-RoPE positions vs HF's get_rope_index, checks that can fail, and spans
of inputs shaped by the real HF image processors.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from converters.base import UnsupportedConfigError
from hooked_vlm import HookedVLM
from tests import tiny_qwen_idefics as T

ATOL = 1e-4


def _qwen(version):
    """(folder, hf, model, inputs) of the shared tiny build (tests.tiny_qwen_idefics.qwen)."""
    return T.qwen(version)[:4]


def _idefics(arch):
    """(folder, hf, model, inputs) of the shared tiny build (tests.tiny_qwen_idefics.idefics)."""
    return T.idefics(arch)[:4]


def _maxdiff(a, b):
    return (a - b).abs().max().item()


def _assert_logits_match_hf(model, hf, inputs: dict) -> None:
    """Logits at real (unpadded) positions equal HF's within ATOL."""
    with torch.no_grad():
        ref = hf(**inputs).logits
        ours = model(**inputs)
    real = inputs["attention_mask"].bool()
    assert _maxdiff(ref[real], ours[real]) <= ATOL


def _image(h, w, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


# ---------------------------------------------------------------- Qwen2-VL / Qwen2.5-VL
@pytest.mark.parametrize("version", ["2", "2.5"])
def test_qwen_vision_tower_and_merger_match_hf(version):
    from transformers.vision_utils import get_vision_window_index

    _, hf, model, inputs = _qwen(version)
    grid = inputs["image_grid_thw"]
    with torch.no_grad():
        ref = hf.model.visual(inputs["pixel_values"], grid_thw=grid, output_hidden_states=True)
        _, cache = model.run_with_cache(**inputs, names_filter=lambda n: n.startswith(("vision.", "projector.")))
    order = torch.arange(grid.prod(-1).sum().item() // 4)
    if version == "2.5":  # HF runs the blocks window by window; our stream keeps the input order
        order, cu = get_vision_window_index(grid, 2, 8, 2)
        assert len(cu) - 1 > len(grid), "the test batch must have images with several windows"

    def hf_order(x):
        return x.reshape(-1, 4, x.shape[-1])[order].reshape(-1, x.shape[-1])

    assert len(ref.hidden_states) == model.cfg.vision.tower.n_layers + 1
    assert _maxdiff(ref.hidden_states[0], hf_order(cache["vision.hook_embed"][0])) <= ATOL
    for layer in range(model.cfg.vision.tower.n_layers):
        assert _maxdiff(ref.hidden_states[layer + 1], hf_order(cache[f"vision.blocks.{layer}.hook_resid_post"][0])) <= ATOL
    assert _maxdiff(ref.pooler_output, cache["projector.hook_out"][0]) <= ATOL


@pytest.mark.parametrize("version", ["2", "2.5"])
def test_mrope_positions_match_hf_get_rope_index(version):
    from hooked_vlm.positions import mrope_positions

    _, hf, model, inputs = _qwen(version)
    ref, ref_deltas = hf.model.get_rope_index(inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
                                              image_grid_thw=inputs["image_grid_thw"],
                                              attention_mask=inputs["attention_mask"])
    from hooked_vlm.model import KVCache

    cache = KVCache(model.cfg.n_layers)
    ours = mrope_positions(model, inputs["input_ids"], inputs["attention_mask"], None, cache,
                           {"image_grid_thw": inputs["image_grid_thw"]})
    assert torch.equal(ours, ref)
    assert torch.equal(cache.extra["rope_deltas"], ref_deltas)
    assert (ours[1] != ours[2]).any(), "the test batch must exercise 2-D image positions"


def test_qwen_1d_positions_would_differ():
    """The parity test can fail: 1-D positions (HF Qwen2.5-VL's silent fallback) change the logits."""
    _, _, model, inputs = _qwen("2.5")
    with torch.no_grad():
        good = model(**inputs)
        text = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        flat = model(**inputs, position_ids=text[None].expand(3, -1, -1))
    real = inputs["attention_mask"].bool()
    assert _maxdiff(good[real], flat[real]) > 1e-3


def test_qwen25_without_mm_token_type_ids_still_uses_3d_positions():
    """HF Qwen2.5-VL silently falls back to 1-D positions without mm_token_type_ids; we compute them from the ids."""
    _, hf, model, inputs = _qwen("2.5")
    bare = {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
    with torch.no_grad():
        ref = hf(**inputs).logits
        ours = model(**bare)
    real = inputs["attention_mask"].bool()
    assert _maxdiff(ref[real], ours[real]) <= ATOL
    assert torch.equal(model.generate(**bare, max_new_tokens=4, return_type="tokens"),
                       model.generate(**inputs, max_new_tokens=4, return_type="tokens"))


def test_qwen_requires_grids_and_consistent_token_types():
    _, _, model, inputs = _qwen("2")
    no_grid = {k: v for k, v in inputs.items() if k != "image_grid_thw"}
    with pytest.raises(ValueError, match="image_grid_thw"):
        model(**no_grid)
    wrong = dict(inputs, mm_token_type_ids=torch.zeros_like(inputs["mm_token_type_ids"]))
    with pytest.raises(ValueError, match="mm_token_type_ids"):
        model(**wrong)
    short = dict(inputs, image_grid_thw=inputs["image_grid_thw"][:, :] * torch.tensor([1, 2, 1]))
    with pytest.raises(ValueError):
        model(**short)


def test_qwen_generate_without_kv_cache_and_explicit_attention_agree():
    _, _, model, inputs = _qwen("2.5")
    a = model.generate(**inputs, max_new_tokens=6, return_type="tokens")
    b = model.generate(**inputs, max_new_tokens=6, return_type="tokens", use_kv_cache=False)
    assert torch.equal(a, b)
    with torch.no_grad():
        fast = model(**inputs)
        slow = model.run_with_hooks(**inputs, fwd_hooks=[(lambda n: n.endswith("hook_pattern"), lambda x, hook: x)])
    # measured 9e-8 (windowed ViT included): the paths agree as closely as on every family (test_parity,
    # test_fast_and_explicit_paths_agree, checks every residual); this test only ever asked for ATOL
    assert _maxdiff(fast, slow) <= 1e-5


def test_qwen_in_memory_key_layout_loads(tmp_path):
    from safetensors.torch import save_file

    folder, hf, model, inputs = _qwen("2")
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(tmp_path / "model.safetensors"))
    assert any(k.startswith("model.language_model.") for k in hf.state_dict())
    other = HookedVLM.from_pretrained(str(tmp_path))
    with torch.no_grad():
        assert _maxdiff(model(**inputs), other(**inputs)) == 0.0


def test_qwen_converter_refuses_sliding_window(tmp_path):
    folder, _, _, _ = _qwen("2")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["text_config"].update(use_sliding_window=True, sliding_window=8, max_window_layers=1,
                              layer_types=["full_attention", "sliding_attention", "sliding_attention"])
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    with pytest.raises(UnsupportedConfigError, match="sliding"):
        HookedVLM.from_pretrained(str(tmp_path))


def _qwen_processor_folder(version):
    """The tiny Qwen checkpoint plus a tokenizer and the real Qwen2VLImageProcessor (PIL) saved next to it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    folder, hf, _, _ = _qwen(version)
    vocab = {f"w{i}": i for i in range(100)}
    specials = {"<|image_pad|>": T.IMAGE, "<|video_pad|>": T.VIDEO, "<|vision_start|>": T.VSTART, "<|vision_end|>": T.VEND}
    vocab.update(specials)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w3"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w3", pad_token="w0", eos_token="w2", padding_side="left",
                            additional_special_tokens=list(specials)).save_pretrained(folder)
    Qwen2VLImageProcessorPil(patch_size=2, merge_size=2, temporal_patch_size=2, min_pixels=4 * 4,
                             max_pixels=16 * 16).save_pretrained(folder)
    return folder, hf


@pytest.mark.parametrize("version", ["2", "2.5"])
def test_qwen_spans_from_real_image_processor(version):
    folder, hf = _qwen_processor_folder(version)
    model = HookedVLM.from_pretrained(str(folder))
    prompts = ["w5 <|vision_start|><|image_pad|><|vision_end|> w6 w7",
               "w8 <|vision_start|><|image_pad|><|vision_end|> w9 <|vision_start|><|image_pad|><|vision_end|> w4"]
    images = [_image(12, 20, 0), _image(16, 8, 1), _image(8, 8, 2)]
    inputs = model.prepare_inputs(images=images, text=prompts)
    grid = inputs["image_grid_thw"]
    assert grid[:, 1:].tolist() != [grid[0, 1:].tolist()] * 3, "images of different sizes"
    with torch.no_grad():
        ref = hf(**inputs).logits
        logits, cache = model.run_with_cache(**inputs, names_filter="hook_embed")
    real = inputs["attention_mask"].bool()
    assert _maxdiff(ref[real], logits[real]) <= ATOL
    spans = cache.spans
    n_tokens = (grid.prod(-1) // 4).tolist()
    assert spans.positions("image.0", 0).numel() == n_tokens[0]
    assert [spans.positions(f"image.{i}", 1).numel() for i in range(2)] == n_tokens[1:]
    assert spans.positions("boi", 1).numel() == 2 and spans.positions("eoi", 1).numel() == 2
    ids = inputs["input_ids"][1]
    assert (ids[spans.positions("boi", 1)] == T.VSTART).all() and (ids[spans.positions("eoi", 1)] == T.VEND).all()
    first = spans.positions("image.0", 1)
    assert first[0] == spans.positions("boi", 1)[0] + 1 and first[-1] == spans.positions("eoi", 1)[0] - 1
    t, h, w = grid[1].tolist()
    values = torch.arange(spans.seq_len, dtype=torch.float32)
    assert spans.to_grid(values, image=0, batch=1).shape == (h // 2, w // 2)
    g = spans.grid[1, first]
    assert g[:, 2].tolist() == [r for r in range(h // 2) for _ in range(w // 2)]
    assert g[:, 3].tolist() == list(range(w // 2)) * (h // 2)
    shown = model.to_str_tokens(inputs, batch=1)
    assert shown[first[0].item()] == "<img 0,0>" and shown[first[-1].item()] == f"<img {h // 2 - 1},{w // 2 - 1}>"


# ---------------------------------------------------------------- Idefics3 / SmolVLM
@pytest.mark.parametrize("arch", ["idefics3", "smolvlm"])
def test_idefics_vision_tower_matches_hf(arch):
    _, hf, model, inputs = _idefics(arch)
    pv = inputs["pixel_values"].flatten(0, 1)
    real = (pv != 0).flatten(1).any(-1)
    pmask = inputs["pixel_attention_mask"].flatten(0, 1)[real].bool()
    patch_mask = pmask.unfold(1, 2, 2).unfold(2, 2, 2).sum((-1, -2)) > 0
    assert not patch_mask.all(), "the test batch must hold a padded image"
    with torch.no_grad():
        ref = hf.model.vision_model(pixel_values=pv[real], patch_attention_mask=patch_mask, output_hidden_states=True)
        _, cache = model.run_with_cache(**inputs, names_filter=lambda n: n.startswith(("vision.", "projector.")))
    keep = patch_mask.flatten(1)  # padded patches are junk on both sides (masked as keys only)
    assert _maxdiff(ref.hidden_states[0], cache["vision.hook_embed"]) <= ATOL
    for layer in range(model.cfg.vision.tower.n_layers):
        assert _maxdiff(ref.hidden_states[layer + 1][keep], cache[f"vision.blocks.{layer}.hook_resid_post"][keep]) <= ATOL
    assert _maxdiff(ref.last_hidden_state[keep], cache["vision.ln_post.hook_normalized"][keep]) <= ATOL
    with torch.no_grad():
        assert _maxdiff(hf.model.connector(ref.last_hidden_state), cache["projector.hook_out"]) <= ATOL


def _check_idefics_spans(model, inputs, tiles_per_item):
    """tiles_per_item[b] = (rows, cols) of the one image of item b ((0, 0) = not split)."""
    n_side = T.IDEFICS_SIDE
    spans = model.spans_for(inputs["input_ids"], inputs["attention_mask"], model._layouts_without_encoding(inputs))
    for b, (r, c) in enumerate(tiles_per_item):
        n_tiles = r * c + 1
        ids = inputs["input_ids"][b]
        assert spans.positions("image.0", b).numel() == n_tiles * n_side**2
        assert spans.positions("tile_marker", b).numel() == r * c
        assert spans.positions("global_marker", b).numel() == 1
        assert spans.positions("image_border", b).numel() == r * c + 2
        pos = spans.positions("image.0", b)
        tile = spans.grid[b, pos, 1]
        assert tile.tolist() == [t for t in range(n_tiles) for _ in range(n_side**2)]
        # the tile whose tokens follow <row_i_col_j> is tile (i-1) * cols + (j-1); the global image is the last tile
        for k, m in enumerate(spans.positions("tile_marker", b).tolist()):
            assert spans.grid[b, m + 1, 1].item() == k
            assert ids[m].item() == T.ROW_COL[(k // c, k % c)]
        assert spans.grid[b, spans.positions("global_marker", b)[0] + 1, 1].item() == n_tiles - 1
        assert spans.grid[b, pos, 2].tolist()[: n_side**2] == [i for i in range(n_side) for _ in range(n_side)]
        assert not spans.mask("text")[b, spans.positions("tile_marker", b)].any()
    return spans


def test_idefics3_spans_from_real_processor():
    from transformers import Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    _, hf, model, _ = _idefics("idefics3")
    ip = Idefics3ImageProcessorPil(do_image_splitting=True, max_image_size={"longest_edge": 8}, size={"longest_edge": 16})
    processor = Idefics3Processor(image_processor=ip, tokenizer=T.idefics_tokenizer(), image_seq_len=T.IDEFICS_SIDE**2)
    inputs = dict(processor(images=[[_image(20, 13)], [_image(5, 9)]], text=["w5 <image> w6", "w7 <image> w8 w9"],
                            return_tensors="pt", padding=True))
    _check_idefics_spans(model, inputs, [(2, 2), (1, 2)])
    _assert_logits_match_hf(model, hf, inputs)


def test_smolvlm_spans_from_real_image_processor():
    """SmolVLMProcessor needs num2words (not installed): its image processor + HF's own prompt-string function."""
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil
    from transformers.models.smolvlm.processing_smolvlm import get_image_prompt_string

    _, hf, model, _ = _idefics("smolvlm")
    ip = SmolVLMImageProcessorPil(do_image_splitting=True, max_image_size={"longest_edge": 8}, size={"longest_edge": 16})
    images = ip(images=[[_image(20, 13)], [_image(5, 9)]], return_tensors="pt", return_row_col_info=True)
    tok = T.idefics_tokenizer()
    prompts = [f"w5 {get_image_prompt_string(r[0], c[0], T.IDEFICS_SIDE**2, '<fake_token_around_image>', '<image>', '<global-img>')} w6"
               for r, c in zip(images["rows"], images["cols"])]
    enc = tok(prompts, return_tensors="pt", padding=True)
    inputs = dict(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], pixel_values=images["pixel_values"],
                  pixel_attention_mask=images["pixel_attention_mask"])
    tiles = [(r[0], c[0]) for r, c in zip(images["rows"], images["cols"])]
    assert tiles[0] != tiles[1]
    _check_idefics_spans(model, inputs, tiles)
    _assert_logits_match_hf(model, hf, inputs)


def test_idefics_marker_mismatch_raises():
    _, _, model, inputs = _idefics("idefics3")
    broken = dict(inputs, input_ids=inputs["input_ids"].masked_fill(inputs["input_ids"] == T.GLOBAL, 7))
    with pytest.raises(ValueError, match="tiles"):
        model(**broken)


@pytest.mark.parametrize("top_tie", [False, True])
def test_idefics_ties_embeddings_as_hf_does(top_tie):
    from tests.tiny import llama_text_config

    folder, hf = T.make_idefics("smolvlm", text=llama_text_config(tie_word_embeddings=True))
    if top_tie:
        hf.config.tie_word_embeddings = True
        hf.tie_weights()
        hf.save_pretrained(folder)
    assert (hf.lm_head.weight is hf.model.text_model.embed_tokens.weight) == top_tie
    model = HookedVLM.from_pretrained(str(folder))
    inputs = T.idefics_batch()
    _assert_logits_match_hf(model, hf, inputs)


HUB_QWEN2_VL_2B = {  # config.json of Qwen/Qwen2-VL-2B-Instruct (pre-v5 flat layout), abridged to the math fields
    "architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl", "hidden_size": 1536,
    "intermediate_size": 8960, "num_attention_heads": 12, "num_hidden_layers": 28, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
    "use_sliding_window": False, "vocab_size": 151936, "max_window_layers": 28, "max_position_embeddings": 32768,
    "vision_start_token_id": 151652, "vision_end_token_id": 151653, "vision_token_id": 151654, "image_token_id": 151655,
    "video_token_id": 151656, "bos_token_id": 151643, "eos_token_id": 151645, "hidden_act": "silu",
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vision_config": {"depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16, "in_chans": 3, "hidden_size": 1536,
                      "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14, "temporal_patch_size": 2}}
HUB_QWEN25_VL_3B = {  # config.json of Qwen/Qwen2.5-VL-3B-Instruct, abridged to the math fields
    "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl", "hidden_size": 2048,
    "intermediate_size": 11008, "num_attention_heads": 16, "num_hidden_layers": 36, "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
    "use_sliding_window": False, "vocab_size": 151936, "max_window_layers": 70, "max_position_embeddings": 128000,
    "vision_start_token_id": 151652, "vision_end_token_id": 151653, "vision_token_id": 151654, "image_token_id": 151655,
    "video_token_id": 151656, "bos_token_id": 151643, "eos_token_id": 151645, "hidden_act": "silu",
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                      "in_chans": 3, "out_hidden_size": 2048, "patch_size": 14, "spatial_merge_size": 2,
                      "spatial_patch_size": 14, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
                      "tokens_per_second": 2, "temporal_patch_size": 2}}


@pytest.mark.parametrize("hub, widths", [(HUB_QWEN2_VL_2B, (1280, 1536, 1536)), (HUB_QWEN25_VL_3B, (1280, 2048, 2048))])
def test_qwen_hub_configs_convert(hub, widths):
    from transformers import AutoConfig

    from converters import get_converter

    hf = AutoConfig.for_model(**hub)
    cfg = get_converter(hub["architectures"][0]).make_config(hf)
    assert (cfg.vision.tower.d_model, cfg.projector.d_out, cfg.d_model) == widths
    assert cfg.text.rope_parameters["mrope_section"] == [16, 24, 24] and cfg.text.rope_parameters["rope_theta"] == 1e6
    assert cfg.tie_word_embeddings and cfg.roles.boi_token_id == 151652 and cfg.roles.eoi_token_id == 151653
    bad = dict(hub, vision_config=dict(hub["vision_config"], in_chans=4))
    with pytest.raises(UnsupportedConfigError, match="in_chans"):
        get_converter(hub["architectures"][0]).make_config(AutoConfig.for_model(**bad))


def test_qwen_tied_embeddings_load():
    folder, hf = T.make_qwen("2", text=T.qwen_text_config(tie_word_embeddings=True))
    assert hf.lm_head.weight is hf.model.language_model.embed_tokens.weight
    model = HookedVLM.from_pretrained(str(folder))
    assert model.unembed.weight is model.embed.weight
    inputs = T.qwen_batch([[(1, 4, 4)], [(1, 2, 6)]], [2, 0])
    _assert_logits_match_hf(model, hf, inputs)


def test_idefics_unprefixed_key_layout_loads(tmp_path):
    from safetensors.torch import load_file, save_file

    folder, _, model, inputs = _idefics("idefics3")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        if (folder / name).exists():
            (tmp_path / name).write_text((folder / name).read_text())
    tensors = load_file(str(folder / "model.safetensors"))
    assert any(k.startswith("model.text_model.") for k in tensors)
    save_file({k.removeprefix("model."): v for k, v in tensors.items()}, str(tmp_path / "model.safetensors"))
    other = HookedVLM.from_pretrained(str(tmp_path))
    with torch.no_grad():
        assert _maxdiff(model(**inputs), other(**inputs)) == 0.0
