"""LFM2-VL (Lfm2VlForConditionalGeneration) against HF on a tiny random checkpoint (tests/tiny_lfm2vl.py).

Logits, residuals, both attention paths and greedy generate are tests/test_parity.py's CASES ("lfm2-vl"); here: every
vision layer and the projector against HF, a padded row equal to the row alone, 10 greedy tokens without the KV cache,
the conv state in our cache, spans of split images (tiles, thumbnail, markers) and of marker-less prompts, bad input,
and what the converter refuses. Tolerances: fp32, 1e-4 absolute against HF (as test_parity.py), 1e-5 between paths.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from converters import get_converter
from converters.base import UnsupportedConfigError
from hooked_vlm.components.short_conv import ConvState
from hooked_vlm.kv_cache import KVCache
from tests import tiny_lfm2vl as tl
from tests.tiny import max_abs_diff as _max, real_positions as _real

ATOL, PATH_ATOL = 1e-4, 1e-5
REAL = Path(__file__).parent / "real_configs" / "LiquidAI__LFM2-VL-450M.json"


def _hf_vision(b):
    inp = b.inputs
    with torch.no_grad():
        out = b.hf.model.vision_tower(pixel_values=inp["pixel_values"], spatial_shapes=inp["spatial_shapes"],
                                      pixel_attention_mask=inp["pixel_attention_mask"], output_hidden_states=True)
        feats = b.hf.model.get_image_features(pixel_values=inp["pixel_values"], spatial_shapes=inp["spatial_shapes"],
                                              pixel_attention_mask=inp["pixel_attention_mask"]).pooler_output
    return out, feats


@pytest.mark.parametrize("path", ["fast", "explicit"])
def test_every_vision_layer_and_the_projector_match_hf(path):
    b = tl.lfm2vl()
    ref, feats = _hf_vision(b)
    names = lambda n: n.startswith(("vision.", "projector.")) or n == "hook_image_embeds"  # noqa: E731
    if path == "explicit":
        hooks = [(f"vision.blocks.{l}.attn.hook_pattern", lambda t, hook: t) for l in range(2)]
        with b.model.hooks(fwd_hooks=hooks):
            _, cache = b.model.run_with_cache(**b.inputs, names_filter=names)
    else:
        _, cache = b.model.run_with_cache(**b.inputs, names_filter=names)
    real = b.inputs["pixel_attention_mask"].bool()
    assert not real.all(), "the test tiles must be padded"
    assert _max(ref.hidden_states[0], cache["vision.hook_embed"]) <= ATOL  # padded patches too: resized[0], as HF
    for layer in range(b.model.cfg.vision.tower.n_layers):
        assert _max(ref.hidden_states[layer + 1], cache[f"vision.blocks.{layer}.hook_resid_post"], real) <= ATOL
    assert _max(ref.last_hidden_state, cache["vision.ln_post.hook_normalized"], real) <= ATOL
    counts = [f.shape[0] for f in feats]
    assert counts == [6, 4, 4, 2, 6, 6]  # 2 x 3; two 2 x 2 tiles and a 1 x 2 thumbnail; 3 x 2; 3 x 2
    out = cache["projector.hook_out"]
    for i, f in enumerate(feats):
        assert _max(f, out[i, : counts[i]]) <= ATOL
    assert _max(torch.cat(feats), cache["hook_image_embeds"]) <= ATOL


def test_resized_positions_matter():
    """The tiles have different shapes (4 x 6, 4 x 4, 2 x 4, 6 x 4 patches), so every one gets its own resize of the
    4 x 4 table: with the table used unresized (row-major, padded with entry 0) the embeddings leave HF's."""
    from hooked_vlm.components import naflex_vision

    b = tl.lfm2vl()
    ref, _ = _hf_vision(b)
    vision = b.model.vision
    table = vision.pos_embed.detach()
    plain = torch.cat([table, table[:1].expand(24 - 16, -1)])[None].expand(6, -1, -1)
    got = naflex_vision.resized_positions(table, b.inputs["spatial_shapes"], 24)
    emb = vision.patch_embed(b.inputs["pixel_values"]).detach()
    assert _max(ref.hidden_states[0], emb + got) <= ATOL
    assert _max(ref.hidden_states[0], emb + plain) > 100 * ATOL


def _row(inputs: dict, b: int, tiles: list[int]) -> dict:
    real = inputs["attention_mask"][b].bool()
    return dict(input_ids=inputs["input_ids"][b:b + 1, real], attention_mask=inputs["attention_mask"][b:b + 1, real],
                pixel_values=inputs["pixel_values"][tiles], pixel_attention_mask=inputs["pixel_attention_mask"][tiles],
                spatial_shapes=inputs["spatial_shapes"][tiles])


@torch.no_grad()
def test_a_left_padded_row_equals_the_row_alone():
    """Items 0 (3 pads) and 2 (7 pads) of the padded batch against each alone: the conv layers see zeros where the
    padding was, exactly as the conv's own padding alone (no padding leaks into the conv window). The pad positions
    hold token 7, not the pad id 0 (whose embedding HF's padding_idx keeps at zero, which would hide a leak)."""
    b = tl.lfm2vl()
    inputs = dict(b.inputs, input_ids=b.inputs["input_ids"].masked_fill(~_real(b.inputs), 7))
    padded = b.model(**inputs)
    assert _max(b.hf(**inputs).logits, padded, _real(inputs)) <= ATOL
    for item, tiles in ((0, [0]), (2, [5])):
        alone = b.model(**_row(inputs, item, tiles))
        assert _max(alone[0], padded[item, _real(inputs)[item]]) <= ATOL


def test_ten_greedy_tokens_without_the_kv_cache_match_hf():
    """The parity test runs 6 tokens without our cache; here all 10 (the prompt is rerun every step)."""
    from tests.test_parity import hf_generate, our_generate

    ref = hf_generate("lfm2-vl")
    ours = our_generate("lfm2-vl", n=10, use_kv_cache=False)
    assert torch.equal(ours, ref)
    new = ref[:, tl.lfm2vl().inputs["input_ids"].shape[1]:]
    assert new.shape[1] == 10 and len(set(new.flatten().tolist())) > 3  # real generations, not one repeated token


@torch.no_grad()
def test_the_conv_state_lives_in_our_cache():
    """KVCache(model.cfg) holds a ConvState on conv layers (window [batch, d_model, kernel - 1]) and keys / values on
    attention layers; a cached step equals the same position computed from the whole sequence."""
    b = tl.lfm2vl()
    model, inputs = b.model, b.inputs
    cache = KVCache(model.cfg)
    assert [type(s).__name__ for s in cache.layers] == ["ConvState", "LayerKVCache", "ConvState", "ConvState",
                                                        "LayerKVCache"]
    model(**inputs, kv_cache=cache)
    n = inputs["input_ids"].shape[1]
    state = cache.layers[0]
    assert isinstance(state, ConvState) and state.window.shape == (3, 32, 2) and cache.length == n
    nxt = torch.tensor([[7], [8], [9]])
    step = model(nxt, attention_mask=torch.ones(3, 1, dtype=torch.long), kv_cache=cache)
    full = dict(inputs, input_ids=torch.cat([inputs["input_ids"], nxt], 1),
                attention_mask=torch.cat([inputs["attention_mask"], torch.ones(3, 1, dtype=torch.long)], 1))
    assert _max(step[:, 0], model(**full)[:, -1]) <= ATOL


def test_spans_of_split_images_and_markers():
    b = tl.lfm2vl()
    _, cache = b.model.run_with_cache(**b.inputs, names_filter="hook_embed")
    spans, ids = cache.spans, b.inputs["input_ids"]
    assert [spans.n_images(i) for i in range(3)] == [1, 2, 1]
    assert torch.equal(spans.mask("boi"), ids == tl.START) and torch.equal(spans.mask("eoi"), ids == tl.END)
    assert torch.equal(spans.mask("thumbnail_marker"), ids == tl.THUMB)
    assert int(spans.mask("tile_marker").sum()) == 2 and not (spans.mask("text") & (ids >= tl.START)).any()
    wide = spans.layouts[1][0]
    assert (wide.tiles, wide.tile_shapes, wide.thumbnail) == (3, [(2, 2), (2, 2), (1, 2)], True)
    pos = spans.positions("image.0", 1)
    grid = spans.grid[1, pos]
    assert grid[:, 1].tolist() == [0] * 4 + [1] * 4 + [2] * 2  # tile of each token
    assert grid[:4, 2:].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]] and grid[8:, 2:].tolist() == [[0, 0], [0, 1]]
    assert torch.equal(spans.positions("thumbnail", 1), pos[8:])
    assert spans.to_grid(torch.arange(spans.seq_len, dtype=torch.float), image=1, batch=1).shape == (3, 2)
    shown = b.model.to_str_tokens(b.inputs, batch=1)
    assert "<img 2:0,1>" in shown and "<img 0,0>" not in shown[: int(pos[0])]


def test_without_marker_ids_every_run_of_image_tokens_is_one_image(monkeypatch):
    """``use_image_special_tokens=False`` prompts (no markers) and a model without marker ids: the split image's 3
    tiles make one run of 10 tokens, one image."""
    b = tl.lfm2vl()
    roles = b.model.cfg.roles
    monkeypatch.setattr(roles, "boi_token_id", None)
    monkeypatch.setattr(roles, "eoi_token_id", None)
    inputs = tl.lfm2vl_batch([[tl.SMALL], [tl.WIDE, tl.TALL]], [3, 0], markers=False)
    with torch.no_grad():
        ref = b.hf(**inputs).logits
    logits, cache = b.model.run_with_cache(**inputs, names_filter="hook_embed")
    assert _max(ref, logits, _real(inputs)) <= ATOL
    assert [l.tiles for l in cache.spans.layouts[1]] == [3, 1] and cache.spans.n_images(0) == 1


def test_bad_inputs_say_what_is_wrong():
    b = tl.lfm2vl()
    inputs = dict(b.inputs)
    with pytest.raises(ValueError, match="needs spatial_shapes"):
        b.model(**{k: v for k, v in inputs.items() if k != "spatial_shapes"})
    shapes = inputs["spatial_shapes"].clone()
    shapes[0] = torch.tensor([2, 6])
    with pytest.raises(ValueError, match="must mark rows \\* cols real patches"):
        b.model(**dict(inputs, spatial_shapes=shapes))
    with pytest.raises(ValueError, match="flattened patches"):
        b.model(**dict(inputs, pixel_values=inputs["pixel_values"].reshape(6, 24, 3, 4)))
    short = tl.lfm2vl_batch([[tl.SMALL], [tl.WIDE]], [0, 0])
    short["pixel_values"] = short["pixel_values"][:3]
    short["pixel_attention_mask"], short["spatial_shapes"] = short["pixel_attention_mask"][:3], short["spatial_shapes"][:3]
    with pytest.raises(ValueError, match="holds 10 image tokens but the tiles left in pixel_values give 8"):
        b.model(**short)


def _hf_config(text: dict | None = None, **top):
    from transformers import Lfm2VlConfig

    return Lfm2VlConfig(text_config=text or tl.text_config(), vision_config=tl.vision_config(), image_token_id=tl.IMAGE,
                        projector_hidden_size=48, **top)


@pytest.mark.parametrize("sizes", [dict(intermediate_size=64), dict(intermediate_size=6656, block_multiple_of=256),
                                   dict(intermediate_size=100, block_ffn_dim_multiplier=1.5),
                                   dict(intermediate_size=64, block_auto_adjust_ff_dim=False)])
def test_feed_forward_width_is_hfs(sizes):
    from transformers.models.lfm2.modeling_lfm2 import Lfm2MLP

    hf = _hf_config(tl.text_config(**sizes))
    ours = get_converter("Lfm2VlForConditionalGeneration").make_config(hf)
    assert ours.text.d_mlp == Lfm2MLP(hf.text_config).w1.out_features


@pytest.mark.parametrize("change, match", [
    (dict(text=dict(use_pos_enc=False)), "use_pos_enc"),
    (dict(text=dict(block_dim=64)), "block_dim=64 differs from hidden_size=32"),
    (dict(text=dict(layer_types=["conv", "sliding_attention", "conv", "conv", "full_attention"])), "unknown kinds"),
    (dict(top=dict(image_token_index=5)), "image_token_index=5 differs from image_token_id=100"),
])
def test_unsupported_configs_are_refused(change, match):
    hf = _hf_config(tl.text_config(**change.get("text", {})), **change.get("top", {}))
    with pytest.raises(UnsupportedConfigError, match=match):
        get_converter("Lfm2VlForConditionalGeneration").make_config(hf)


def test_real_lfm2_vl_450m_settings():
    """What the converter reads from LFM2-VL-450M's config (tests/real_configs; structure and parameter count against
    HF's meta model in tests/test_real_configs.py): 16 LM layers, 10 conv (kernel 3) + 6 attention (16 / 8 heads of
    64), feed-forward 6656 -> 4608, SigLIP2 base (12 x 768, patch 16, 16 x 16 positions), unshuffle x2 -> 2560 -> 1024."""
    from transformers import AutoConfig

    cfg = get_converter("Lfm2VlForConditionalGeneration").make_config(AutoConfig.for_model(**json.loads(REAL.read_text())))
    t = cfg.text
    assert (t.n_layers, t.layer_types.count("conv"), t.short_conv.kernel, t.short_conv.bias) == (16, 10, 3, False)
    assert (t.n_heads, t.n_key_value_heads, t.d_head, t.d_mlp, t.rope_parameters["rope_theta"]) == (16, 8, 64, 4608, 1e6)
    assert (cfg.vision.tower.n_layers, cfg.vision.tower.d_model, cfg.vision.patch_size, cfg.vision.n_patches) == (12, 768, 16, 256)
    assert (cfg.projector.extra["factor"], cfg.projector.extra["d_hidden"], cfg.projector.d_out) == (2, 2560, 1024)
    assert cfg.roles.image_token_id == 396 and cfg.tie_word_embeddings and cfg.projector.extra["layer_norm"]


def test_hub_key_layout_loads(tmp_path):
    """Hub checkpoints keep SigLIP2's inner name (model.vision_tower.vision_model.*)."""
    from safetensors.torch import load_file, save_file

    from hooked_vlm import HookedVLM

    b = tl.lfm2vl()
    tensors = load_file(str(b.folder / "model.safetensors"))
    renamed = {k.replace("model.vision_tower.", "model.vision_tower.vision_model."): v for k, v in tensors.items()}
    assert renamed != tensors
    (tmp_path / "config.json").write_text((b.folder / "config.json").read_text())
    save_file(renamed, str(tmp_path / "model.safetensors"))
    other = HookedVLM.from_pretrained(str(tmp_path), processor=None)
    other.cfg.roles = b.model.cfg.roles  # marker ids come from the tokenizer, which this folder lacks
    with torch.no_grad():
        assert _max(b.model(**b.inputs), other(**b.inputs)) == 0.0


def test_inspect_reports_the_conv_state_per_sequence():
    """LFM2-VL-450M: 10 conv layers keep a [d_model 1024, kernel - 1 = 2] window each, whatever the tokens."""
    from hooked_vlm.inspect import build_report
    from hooked_vlm.memory import recurrent_state_bytes
    from tests.test_real_configs import config_folder

    report = build_report("LiquidAI/LFM2-VL-450M", "a real config.json", config_folder(REAL), None, {})
    assert report.layer_kinds == {"conv": 10, "full_attention": 6}
    assert report.recurrent_state_bytes["float32"] == 10 * 1024 * 2 * 4 and report.recurrent_state_bytes["bfloat16"] == 10 * 1024 * 2 * 2
    assert "recurrent state per sequence (10 short-conv layers" in report.format()
    cfg = get_converter("Lfm2VlForConditionalGeneration").make_config(_hf_config())
    assert recurrent_state_bytes(cfg.text, 4, batch=3) == 3 * 3 * 32 * 2 * 4  # 3 conv layers of the tiny model
