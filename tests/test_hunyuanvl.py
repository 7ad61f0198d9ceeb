"""HunYuanVL (HunYuanVLForConditionalGeneration) against HF on the tiny random checkpoint of tests/tiny_hunyuanvl.py,
beyond tests/test_parity.py's CASES line: every vision layer (both attention paths), the merger, the xdrope positions
and rotary tables, what each new part changes (q/k norms after RoPE, multimodal positions, the ntk-alpha base), the
spans of the image run (begin / row breaks / end), the processor stand-in against HF's processor, refusals.

Tolerances: fp32, 1e-4 absolute (as tests/test_parity.py), 1e-6 where the same arithmetic runs in another order.
The batch: two items, 3 left pads on item 1, three images of different sizes (4 x 6, 4 x 4, 6 x 8 patches).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from converters import get_converter
from converters.base import UnsupportedConfigError
from tests import tiny_hunyuanvl as th
from tests.tiny import max_abs_diff as _max, real_positions as _real
from tests.tiny_qwen_idefics import IMAGE, VEND, VSTART

ATOL = 1e-4


def _built():
    b = th.hunyuanvl()
    return b.hf, b.model, b.inputs


@pytest.mark.parametrize("path", ["fast", "explicit"])
def test_every_vision_layer_and_the_merger_match_hf(path):
    hf, model, inputs = _built()
    grid, tower = inputs["image_grid_thw"], hf.model.vision_tower
    n_layers = model.cfg.vision.tower.n_layers
    hooks = [(f"vision.blocks.{l}.attn.hook_pattern", lambda t, hook: t) for l in range(n_layers)] if path == "explicit" else []
    store = {}

    def keep(t, hook):
        store[hook.name] = t.detach().clone()
        return t

    names = ["vision.hook_embed", "projector.hook_out"] + [f"vision.blocks.{l}.hook_resid_post" for l in range(n_layers)]
    seen = {"blocks": []}
    handles = [blk.register_forward_hook(lambda m, a, out: seen["blocks"].append(out)) for blk in tower.layers]
    handles.append(tower.embeddings.register_forward_hook(lambda m, a, out: seen.__setitem__("embed", out)))
    try:
        with torch.no_grad():
            ref = tower(inputs["pixel_values"], grid_thw=grid)
            model.run_with_hooks(**inputs, fwd_hooks=hooks + [(n, keep) for n in names])
    finally:
        for handle in handles:
            handle.remove()
    assert len(seen["blocks"]) == n_layers
    assert _max(seen["embed"], store["vision.hook_embed"]) <= ATOL  # patch conv + resized position grid
    for layer in range(n_layers):
        out = seen["blocks"][layer]
        out = out[0] if isinstance(out, tuple) else out
        assert _max(out, store[f"vision.blocks.{layer}.hook_resid_post"]) <= ATOL, layer
    assert _max(ref.pooler_output, store["projector.hook_out"]) <= ATOL


def test_position_grid_resize_equals_hf_embeddings():
    """Our resized position table == HF's HunYuanVLVisionPatchEmbed.interpolate_pos_encoding, odd grids included."""
    hf, model, _ = _built()
    grid = torch.tensor([[1, 4, 6], [1, 2, 2], [1, 6, 10], [1, 8, 4], [1, 3, 5]])
    embed = hf.model.vision_tower.embeddings
    with torch.no_grad():
        ref = torch.cat([embed.interpolate_pos_encoding(torch.zeros(1), h, w)[0] for _, h, w in grid.tolist()])
        assert _max(ref, model.vision.resized_pos_embed(grid)) <= 1e-6


def test_xdrope_positions_and_rotary_tables_match_hf():
    from hooked_vlm.model import KVCache
    from hooked_vlm.positions import POSITION_FNS
    from transformers.models.hunyuan_vl.modeling_hunyuan_vl import HunYuanVLRotaryEmbedding

    hf, model, inputs = _built()
    ref, _ = hf.model.get_rope_index(inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
                                     image_grid_thw=inputs["image_grid_thw"], attention_mask=inputs["attention_mask"])
    cache = KVCache(model.cfg.n_layers)
    ours = POSITION_FNS["xdrope"](model, inputs["input_ids"], inputs["attention_mask"], None, cache,
                                  {"image_grid_thw": inputs["image_grid_thw"], "mm_token_type_ids": inputs["mm_token_type_ids"]})
    real = inputs["attention_mask"].bool()
    assert ours.shape[0] == 4 and torch.equal(ours[:, real], ref[:, real])
    assert (ours[1] != ours[0]).any() and (ours[3] == 1).any(), "the batch must exercise grid positions and image 1"
    positions = torch.randint(0, 50, (4, 2, 7))
    ref_cos, ref_sin = HunYuanVLRotaryEmbedding(hf.config.text_config)(torch.zeros(1), positions)
    cos, sin = model.rotary(positions, torch.float32)
    assert _max(ref_cos, cos[:, :, 0]) <= 1e-6 and _max(ref_sin, sin[:, :, 0]) <= 1e-6


@pytest.mark.parametrize("change", ["qk_norm_before_rope", "flat_positions", "no_alpha"])
def test_each_hunyuan_part_changes_the_logits(change):
    """The parity tests would catch each part ignored: q/k norms before RoPE, 1-D positions, or RoPE without the
    ntk-alpha base are far from HF (a fresh conversion is edited, not the shared one)."""
    from hooked_vlm import HookedVLM
    from hooked_vlm.components.layer_rotary import build_rotary

    b = th.hunyuanvl()
    model = HookedVLM.from_pretrained(str(b.folder), processor=None)
    inputs = dict(b.inputs)
    if change == "qk_norm_before_rope":
        model.cfg.text.qk_norm_after_rope = False
    elif change == "flat_positions":
        text = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        inputs["position_ids"] = text[None].expand(4, -1, -1)
    else:
        model.cfg.text.rope_parameters = dict(model.cfg.text.rope_parameters, rope_theta=10000.0)
        model.rotary = build_rotary(model.cfg.text)
    with torch.no_grad():
        ref = b.hf(**b.inputs).logits
        changed = model(**inputs)
    assert _max(ref, changed, _real(b.inputs)) > 10 * ATOL


def test_image_run_spans_begin_row_breaks_end():
    """The run of image tokens: the begin embedding (image, no cell), rows of cells with a row break after each, the end
    embedding; <im_start> / <im_end> are boi / eoi."""
    _, model, inputs = _built()
    _, cache = model.run_with_cache(**inputs, names_filter="hook_embed")
    spans, ids = cache.spans, inputs["input_ids"]
    for b, grids in enumerate(th.GRIDS):
        run = (ids[b] == IMAGE).nonzero().flatten()
        assert spans.positions("boi", b).tolist() == (ids[b] == VSTART).nonzero().flatten().tolist()
        assert spans.positions("eoi", b).tolist() == (ids[b] == VEND).nonzero().flatten().tolist()
        start = 0
        for i, (_, h, w) in enumerate(grids):
            rows, cols = h // 2, w // 2
            image = run[start:start + th.image_tokens(h, w)]
            breaks = [int(image[1 + r * (cols + 1) + cols]) for r in range(rows)]
            assert [p for p in spans.positions("row_break", b).tolist() if image[0] <= p <= image[-1]] == breaks
            cells = spans.grid[b, image]
            assert cells[0, 0] == cells[-1, 0] == i and (cells[0, 2:] == -1).all() and (cells[-1, 2:] == -1).all()
            grid_rows = [c for c in cells[1:-1].tolist() if c[2] >= 0]
            assert [(r, c) for _, _, r, c in grid_rows] == [(r, c) for r in range(rows) for c in range(cols)]
            start += th.image_tokens(h, w)


def test_processor_stand_in_equals_hf_processor():
    """converters/_hunyuan_inputs.HunYuanVLInputs gives HF's HunYuanVLProcessor's input_ids, pixel_values, grids and
    mm_token_type_ids (HF's processor needs no torchvision with the PIL image processor), and its output runs through
    both models to the same logits."""
    from PIL import Image
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import HunYuanVLProcessor, PreTrainedTokenizerFast
    from transformers.models.hunyuan_vl.image_processing_pil_hunyuan_vl import HunYuanVLImageProcessorPil

    from converters._hunyuan_inputs import HunYuanVLInputs

    hf, model, _ = _built()
    vocab = {f"w{i}": i for i in range(IMAGE)} | {"<img>": IMAGE, "<im_start>": VSTART, "<im_end>": VEND}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w3"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="w0", padding_side="left",
                                        extra_special_tokens={"image_token": "<img>", "image_start_token": "<im_start>",
                                                              "image_end_token": "<im_end>"})
    tokenizer.add_tokens(["<img>", "<im_start>", "<im_end>"], special_tokens=True)
    images = HunYuanVLImageProcessorPil(patch_size=2, merge_size=2, min_pixels=16, max_pixels=256,
                                        image_mean=[0.5] * 3, image_std=[0.5] * 3)
    rng = np.random.default_rng(0)
    pics = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in ((8, 12), (16, 16))]
    prompts = ["w5 <im_start><img><im_end> w6 w7", "w8 <im_start><img><im_end> w9"]
    ours = HunYuanVLInputs(tokenizer, images, "<img>", "<im_start>", "<im_end>")(images=pics, text=prompts, padding=True)
    ref = HunYuanVLProcessor(image_processor=images, tokenizer=tokenizer)(images=pics, text=prompts, padding=True,
                                                                            return_tensors="pt")
    for key in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"):
        assert torch.equal(torch.as_tensor(ours[key]), torch.as_tensor(ref[key])), key
    real = ours["attention_mask"].bool()
    with torch.no_grad():
        assert _max(hf(**ours).logits, model(**ours), real) <= ATOL


def test_refusals_name_the_field():
    hf, _, _ = _built()
    convert = get_converter("HunYuanVLForConditionalGeneration").make_config
    bad = copy.deepcopy(hf.config)
    bad.text_config.rope_parameters = {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0,
                                       "mrope_section": [1, 1, 1, 1]}
    with pytest.raises(UnsupportedConfigError, match="without alpha"):
        convert(bad)
    bad = copy.deepcopy(hf.config)
    bad.text_config.rope_parameters = dict(bad.text_config.rope_parameters, mrope_section=[2, 1, 1, 1])
    with pytest.raises(UnsupportedConfigError, match="mrope_section"):
        convert(bad)
    bad = copy.deepcopy(hf.config)
    bad.vision_config.temporal_patch_size = 2
    with pytest.raises(UnsupportedConfigError, match="temporal_patch_size"):
        convert(bad)
    bad = copy.deepcopy(hf.config)
    bad.vision_config.num_key_value_heads = 1
    with pytest.raises(UnsupportedConfigError, match="num_key_value_heads"):
        convert(bad)
    bad = copy.deepcopy(hf.config)
    bad.image_start_token_id = VSTART + 7
    with pytest.raises(UnsupportedConfigError, match="image_start_token_id"):
        convert(bad)


def test_placeholder_runs_must_match_the_grids():
    _, model, inputs = _built()
    ids = inputs["input_ids"].clone()
    first = int((ids[0] == IMAGE).nonzero()[0])
    ids[0, first] = 5  # one image token fewer in item 0
    bad = dict(inputs, input_ids=ids, mm_token_type_ids=(ids == IMAGE).long())
    with pytest.raises(ValueError, match="image"):
        model(**bad)


def test_decode_steps_from_the_kv_cache_equal_hf_full_forwards():
    """Two tokens fed one at a time through our KV cache (positions continue each axis from the prompt's last, as
    HF's generate) give HF's logits of a full forward over prompt + tokens (its get_rope_index over everything)."""
    from hooked_vlm.model import KVCache

    hf, model, inputs = _built()
    new = torch.tensor([[7, 9], [11, 13]])
    cache = KVCache(model.cfg)
    mask = inputs["attention_mask"]
    with torch.no_grad():
        model(**inputs, kv_cache=cache)
        steps = []
        for k in range(new.shape[1]):
            mask = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], dim=1)
            steps.append(model(input_ids=new[:, k:k + 1], attention_mask=mask, kv_cache=cache)[:, -1])
        full_ids = torch.cat([inputs["input_ids"], new], dim=1)
        ref = hf(**dict(inputs, input_ids=full_ids, attention_mask=mask,
                        mm_token_type_ids=(full_ids == IMAGE).long())).logits
    for k in range(new.shape[1]):
        assert _max(ref[:, inputs["input_ids"].shape[1] + k], steps[k]) <= ATOL, k


def test_three_axis_xdrope_matches_hf():
    """mrope_section of 3 entries (column, row, image index; no sequence axis): positions and logits equal HF's on the
    padded batch, and greedy tokens too."""
    from hooked_vlm import HookedVLM

    rope = {"rope_type": "xdrope", "rope_theta": 10000.0, "alpha": 2.0, "factor": 1.0, "xdrope_section": [2, 1, 1]}
    folder, hf = th.make_hunyuanvl(text=th.text_config(rope_parameters=rope), seed=1)
    model = HookedVLM.from_pretrained(str(folder), processor=None)
    inputs = th.batch()
    assert model.cfg.extra["xdrope"]["n_axes"] == 3
    with torch.no_grad():
        ref = hf(**inputs).logits
        ours = model(**inputs)
        ref_tokens = hf.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert _max(ref, ours, _real(inputs)) <= ATOL
    assert torch.equal(ref_tokens, model.generate(**inputs, max_new_tokens=6, return_type="tokens"))
