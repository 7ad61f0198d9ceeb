"""Llama4ForConditionalGeneration beyond tests/test_parity.py's generic checks (tests/tiny_llama4.py: llama4_vlm):
every vision layer, the adapter and the projector against HF on both attention paths; the tile spans; the chunk,
the 2-D RoPE and the class-token position really act; the converter refuses configs HF cannot run; bad input."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch

from converters import get_converter
from converters.base import UnsupportedConfigError
from tests import tiny_llama4 as tl
from tests.tiny import max_abs_diff as _max

ATOL = 1e-4  # ours vs HF, fp32


@functools.lru_cache(maxsize=None)
def _hf_vision():
    """HF's tower on the padded batch's tiles: (hidden_states, adapter output, projector output)."""
    b = tl.llama4_vlm()
    with torch.no_grad():
        out = b.hf.vision_model(b.inputs["pixel_values"], output_hidden_states=True)
        projected = b.hf.multi_modal_projector(out.last_hidden_state)
    return out.hidden_states, out.last_hidden_state, projected


def _vision_hooks(n: str) -> bool:
    return n.startswith(("vision.", "projector.")) or n == "hook_image_embeds"


@pytest.mark.parametrize("explicit", [False, True])
def test_every_vision_layer_adapter_and_projector_match_hf(explicit):
    b = tl.llama4_vlm()
    hidden, adapter, projected = _hf_vision()
    n = b.model.cfg.vision.tower.n_layers
    assert len(hidden) == n + 1
    attention = ("hook_pattern", "hook_attn_scores")  # hooking either takes the explicit path
    keep = (lambda name: _vision_hooks(name) and (explicit or not name.endswith(attention)))
    with torch.no_grad():
        _, cache = b.model.run_with_cache(**b.inputs, names_filter=keep)
    assert explicit == any(k.endswith("hook_pattern") for k in cache.keys())
    assert _max(hidden[0], cache["vision.ln_pre.hook_normalized"]) <= ATOL  # HF's hidden_states[0]: after layernorm_pre
    for layer in range(n):
        assert _max(hidden[layer + 1], cache[f"vision.blocks.{layer}.hook_resid_post"]) <= ATOL, layer
    assert _max(adapter, cache["projector.hook_adapter_out"]) <= ATOL  # HF's vision_model output
    assert _max(projected, cache["projector.hook_out"]) <= ATOL
    assert _max(projected.reshape(-1, projected.shape[-1]), cache["hook_image_embeds"]) <= ATOL
    assert cache["vision.hook_embed"].shape[1] == (tl.TILE // 2) ** 2 + 1  # patches + the class token


def test_spans_name_each_tile_the_global_tile_and_the_separators():
    """Item 0: one 1 x 2 image (tiles 0, 1 and the global tile 2); item 1: a 1 x 1 image (its only tile is the global
    one, no separators) and a 2 x 1 image. Every tile a 2 x 2 grid of LM tokens, in pixel_values' order."""
    b = tl.llama4_vlm()
    _, cache = b.model.run_with_cache(**b.inputs, names_filter=lambda n: n == "hook_embed")
    spans, ids = cache.spans, b.inputs["input_ids"]
    assert [[(lay.tiles, lay.thumbnail) for lay in item] for item in spans.layouts] == [[(3, True)],
                                                                                         [(1, False), (3, True)]]
    for name, token in (("boi", tl.IMAGE_START), ("eoi", tl.IMAGE_END), ("tile_x_separator", tl.TILE_X),
                        ("tile_y_separator", tl.TILE_Y), ("global_tile_marker", tl.IMAGE), ("image", tl.PATCH)):
        assert torch.equal(spans.mask(name), ids == token), name
    assert spans.positions("tile_x_separator", 1).numel() == 0 and spans.positions("tile_y_separator", 1).numel() == 2
    for item, image, tiles in ((0, 0, 3), (1, 0, 1), (1, 1, 3)):
        grid = spans.grid[item][spans.grid[item][:, 0] == image]
        assert grid[:, 1].tolist() == [t for t in range(tiles) for _ in range(tl.TOKENS_PER_TILE)]
        assert grid[:, 2:].tolist() == [[r, c] for _ in range(tiles) for r in range(2) for c in range(2)]
    # the global tile is the thumbnail: the 4 image tokens after <|image|>
    marker = spans.positions("global_tile_marker", 0)[0]
    assert torch.equal(spans.positions("thumbnail", 0), torch.arange(marker + 1, marker + 1 + tl.TOKENS_PER_TILE))


def test_prompts_are_longer_than_the_chunk_with_images_across_chunks_and_the_chunk_acts(monkeypatch):
    """Chunks count from each row's first real token; each row holds several chunks and an image's tokens fall in two
    of them; the same model without the chunk is far from HF (measured 0.54; so the parity tests check the chunked
    mask)."""
    b = tl.llama4_vlm()
    mask = b.inputs["attention_mask"].bool()
    assert int(mask.sum(1).min()) > 3 * tl.CHUNK
    first = (~mask).sum(1)  # first real position of each row
    for item in range(mask.shape[0]):
        chunks = {int((p - first[item]) // tl.CHUNK) for p in (b.inputs["input_ids"][item] == tl.PATCH).nonzero()[:, 0]}
        assert len(chunks) >= 2, item
    with torch.no_grad():
        ref = b.hf(**b.inputs).logits
        assert _max(ref[mask], b.model(**b.inputs)[mask]) <= ATOL
        monkeypatch.setattr(b.model.cfg.text, "attention_chunk_size", 10_000)
        unchunked = b.model(**b.inputs)
    assert _max(ref[mask], unchunked[mask]) > 10 * ATOL


@pytest.mark.parametrize("change", ["rope_offset_0", "class_token_first", "no_rope"])
def test_the_2d_rope_and_the_class_token_position_act(change, monkeypatch):
    """Each Llama 4 tower choice matters on these tiles: turning it off or back to CLIP's puts the last vision layer
    far from HF (so the parity above checks it; measured: offset 0 2.7e-2, class token first 6.4)."""
    b = tl.llama4_vlm()
    hidden, _, _ = _hf_vision()
    tower = b.model.vision
    if change == "rope_offset_0":
        monkeypatch.setattr(tower, "offset", 0)
    elif change == "class_token_first":
        monkeypatch.setattr(tower, "class_last", False)
    else:
        monkeypatch.setattr(tower, "rotary", lambda dtype: None)
    with torch.no_grad():
        _, cache = b.model.run_with_cache(**b.inputs, names_filter=lambda n: n.startswith("vision.blocks"))
    last = cache[f"vision.blocks.{b.model.cfg.vision.tower.n_layers - 1}.hook_resid_post"]
    if change == "class_token_first":  # compare the patches (the class token moved)
        assert _max(hidden[-1][:, :-1], last[:, 1:]) > 10 * ATOL
    else:
        assert _max(hidden[-1], last) > 10 * ATOL


def _config(**vision):
    from transformers import Llama4Config

    return Llama4Config(text_config={**tl.TEXT, "vocab_size": tl.VLM_VOCAB}, vision_config={**tl.VISION, **vision},
                        image_token_index=tl.PATCH, boi_token_index=tl.IMAGE_START, eoi_token_index=tl.IMAGE_END)


@pytest.mark.parametrize("vision, named", [
    (dict(intermediate_size=96), "intermediate_size"),  # fc1 would receive 4 * 32 = 128
    (dict(projector_input_dim=40), "projector_output_dim"),  # fc2 would receive 40, built for 48
    (dict(vision_output_dim=40), "vision_output_dim"),  # linear_1 would receive 48
    (dict(pixel_shuffle_ratio=0.3), "pixel_shuffle_ratio"),
    (dict(num_attention_heads=16), "head size"),  # d_head 2: no pair for each of two axes
    (dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}), "rope_parameters"),
    (dict(something_new=3), "something_new"),
])
def test_converter_refuses_configs_it_does_not_compute_as_hf(vision, named):
    with pytest.raises(UnsupportedConfigError, match=named):
        get_converter("Llama4ForConditionalGeneration").make_config(_config(**vision))


@pytest.mark.parametrize("vision", [dict(intermediate_size=96), dict(projector_input_dim=40),
                                    dict(vision_output_dim=40)])
def test_the_widths_refused_as_not_chaining_break_hf_itself(vision):
    """The refusals above that say HF's own forward fails: it does (adapter fc1 / fc2 or the projector's matmul)."""
    from transformers import Llama4ForConditionalGeneration

    torch.manual_seed(0)
    hf = Llama4ForConditionalGeneration(_config(**vision)).eval()
    with torch.no_grad(), pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        hf.multi_modal_projector(hf.vision_model(torch.randn(1, 3, tl.TILE, tl.TILE)).last_hidden_state)


def test_fields_hf_never_reads_are_accepted_and_change_nothing_in_hf():
    """hidden_act / norm_eps / multi_modal_projector_bias / vision_feature_* are listed as ignored: HF's tower gives
    the same output with other values (same weights), and the converter accepts them."""
    from transformers import Llama4ForConditionalGeneration

    b = tl.llama4_vlm()
    odd = dict(hidden_act="silu", norm_eps=1e-2, multi_modal_projector_bias=True,
               vision_feature_select_strategy="full", vision_feature_layer=-2)
    hf = Llama4ForConditionalGeneration(_config(**odd)).eval()
    hf.load_state_dict(b.hf.state_dict())
    with torch.no_grad():
        tiles = b.inputs["pixel_values"][:2]
        assert torch.equal(hf.vision_model(tiles).last_hidden_state, b.hf.vision_model(tiles).last_hidden_state)
    cfg = get_converter("Llama4ForConditionalGeneration").make_config(hf.config)
    assert cfg.vision.tower.norm_eps == 1e-5 and cfg.vision.tower.act_fn == "gelu" and not cfg.projector.bias


def test_tiles_that_do_not_match_the_prompt_are_refused_with_the_counts():
    b = tl.llama4_vlm()
    inputs = dict(b.inputs, pixel_values=b.inputs["pixel_values"][:-1])
    with pytest.raises(ValueError, match=r"announce 7 tiles .* holds 6"):
        b.model(**inputs)
    inputs = dict(b.inputs, pixel_values=b.inputs["pixel_values"][..., :6, :6])
    with pytest.raises(ValueError, match="pixel_values has shape"):
        b.model(**inputs)
    ids = b.inputs["input_ids"].clone()
    ids[1, (ids[1] == tl.IMAGE_END).nonzero()[-1, 0]] = 7  # the second image of item 1 is never closed
    with pytest.raises(ValueError, match="never closed"):
        b.model(**dict(b.inputs, input_ids=ids))


def test_the_layout_is_read_before_the_tower_runs():
    """Spans are built from the tokens before encoding: a hook in the vision tower already sees this forward's."""
    b = tl.llama4_vlm()
    seen = []
    b.model.run_with_hooks(**b.inputs, fwd_hooks=[("vision.hook_patch_embed",
                                                    lambda t, hook: seen.append(hook.spans.n_images(1)) or t)])
    assert seen == [2]


def test_vision_config_is_a_plain_declaration():
    """The tower is the family-agnostic vit_rope2d kind driven by config fields (no Llama 4 names in components)."""
    cfg = tl.llama4_vlm().model.cfg
    assert cfg.vision.kind == "vit_rope2d" and cfg.vision.tower.rope_axes == 2 and cfg.vision.tower.rope_interleaved
    assert cfg.vision.extra == {"rope_theta": 10000.0, "class_token_last": True, "rope_position_offset": 1,
                                "ln_post": True}
    assert dataclasses.asdict(cfg.projector)["extra"] == {"scale_factor": 2, "mlp": "adapter", "d_hidden": 48}
    assert cfg.extra["parts"] == {"tower": "llama4_vision_model", "projector": "pixel_shuffle_adapter",
                                  "lm": "llama4_text"}
