"""InternVL 3 / 3.5 (InternVLForConditionalGeneration) against HF on tiny random checkpoints (tests/tiny_internvl.py).

Logits, LM residuals, both attention paths and greedy generation are tests/test_parity.py's (cases internvl-qwen2,
internvl-qwen3); golden hook names and every-hook-fires are tests/test_hooks.py's. Here: every InternViT layer and the
projector against HF, the spans the real processor's tiles give, the final-LayerNorm variant, and the refusals.
Tolerances: fp32, 1e-4 absolute against HF (as test_parity), 1e-5 between our two attention paths.
"""

from __future__ import annotations

import functools

import pytest
import torch

from converters import get_converter
from converters.base import UnsupportedConfigError
from hooked_vlm import HookedVLM
from tests import tiny_internvl as ti
from tests.tiny import max_abs_diff as _max

ATOL = 1e-4
KINDS = ["qwen2", "qwen3"]


@functools.lru_cache(maxsize=None)
def vision_refs(kind: str):
    """HF's InternViT hidden states and projected image features for the padded batch's tiles."""
    b = ti.internvl(kind)
    pixels = b.inputs["pixel_values"]
    with torch.no_grad():
        states = b.hf.model.vision_tower(pixels, output_hidden_states=True).hidden_states
        features = b.hf.model.get_image_features(pixels).pooler_output
    return states, features


@pytest.mark.parametrize("explicit", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_every_vision_layer_and_the_projector_match_hf(kind, explicit):
    """hidden_states[0] = patches + class token + positions; [l + 1] = layer l's output (layer scale included);
    the projector output = HF's pixel shuffle + LayerNorm + MLP. ``explicit``: every vision hook_pattern hooked."""
    b = ti.internvl(kind)
    states, features = vision_refs(kind)
    n = b.model.cfg.vision.tower.n_layers
    hooks = [(f"vision.blocks.{l}.attn.hook_pattern", lambda t, hook: t) for l in range(n)] if explicit else []
    keep = lambda name: name.startswith(("vision.hook_embed", "projector.")) or name.endswith("hook_resid_post")  # noqa: E731
    with torch.no_grad(), b.model.hooks(fwd_hooks=hooks):
        _, cache = b.model.run_with_cache(**b.inputs, names_filter=keep)
    assert len(states) == n + 1
    assert _max(states[0], cache["vision.hook_embed"]) <= ATOL
    for layer in range(n):
        assert _max(states[layer + 1], cache[f"vision.blocks.{layer}.hook_resid_post"]) <= ATOL, f"layer {layer}"
    assert cache["projector.hook_out"].shape == features.shape  # [tiles, 4 tokens, d_model]
    assert _max(features, cache["projector.hook_out"]) <= ATOL


def test_the_qwen3_variant_exercises_what_it_claims():
    """InternViT-6B's kind of tower (RMS norms, no q/k/v bias, one RMS q/k norm over all heads) and Qwen3's
    per-head q/k norms with head_dim != width / heads; InternVL3's kind (LayerNorm, biases) on the Qwen2 case."""
    v3, v2 = ti.internvl("qwen3").model.cfg, ti.internvl("qwen2").model.cfg
    assert v3.vision.tower.normalization_type == "RMS" and not v3.vision.tower.attn_bias
    assert (v3.vision.tower.qk_norm, v3.vision.tower.qk_norm_scope) == ("RMS", "all")
    assert v3.text.qk_norm == "RMS" and v3.text.d_head * v3.text.n_heads != v3.text.d_model
    assert not v3.tie_word_embeddings and v2.tie_word_embeddings
    assert v2.vision.tower.normalization_type == "LN" and v2.vision.tower.attn_bias and v2.vision.tower.qk_norm is None
    assert v2.vision.tower.layer_scale and v3.vision.tower.layer_scale


def test_qk_norm_over_all_heads_differs_from_per_head():
    """HF normalises q over all heads together: a per-head norm with the same weight gives other numbers."""
    b = ti.internvl("qwen3")
    attn = b.model.vision.blocks[0].attn
    q = torch.randn(2, 5, attn.cfg.n_heads, attn.cfg.d_head)
    w = attn.q_norm.w.detach()
    ref = torch.nn.functional.rms_norm(q.flatten(-2), (q.shape[-1] * q.shape[-2],), w, eps=1e-6).view_as(q)
    per_head = torch.nn.functional.rms_norm(q, (q.shape[-1],), eps=1e-6) * w.view(q.shape[-2], q.shape[-1])
    with torch.no_grad():
        ours = attn.q_norm(q)
    assert _max(ref, ours) <= 1e-6
    assert _max(per_head, ours) > 1e-2


@pytest.mark.parametrize("kind", KINDS)
def test_spans_name_each_tile_and_the_thumbnail(kind):
    """The processor cut item 0's 16 x 8 image into 2 tiles + a thumbnail, item 1's 8 x 8 into 1 tile (no thumbnail)
    and its 8 x 24 into 3 + a thumbnail (HF's num_patches); each tile is 4 tokens (a 2 x 2 grid) between <img> and
    </img>, the thumbnail last."""
    b = ti.internvl(kind)
    proc = ti.processor()
    expected = [[proc.image_processor(images=[ti.tiny.pil_image(0, 24).resize((w, h))])["num_patches"][0]
                 for h, w in sizes] for sizes in ([ti.SIZES[0]], [ti.SIZES[1], ti.SIZES[2]])]
    assert expected == [[3], [1, 4]]
    with torch.no_grad():
        _, cache = b.model.run_with_cache(**b.inputs, names_filter="hook_embed")
    spans = cache.spans
    ids = b.inputs["input_ids"]
    for item, tiles_of in enumerate(expected):
        assert [layout.tiles for layout in spans.layouts[item]] == tiles_of
        thumb = spans.positions("thumbnail", item)
        boi, eoi = spans.positions("boi", item), spans.positions("eoi", item)
        assert (ids[item, boi] == ti.START).all() and (ids[item, eoi] == ti.END).all()
        want_thumb = []
        for image, n_tiles in enumerate(tiles_of):
            pos = spans.positions(f"image.{image}", item)
            assert pos.numel() == n_tiles * ti.TOKENS_PER_TILE and pos[0] == boi[image] + 1 and pos[-1] == eoi[image] - 1
            grid = spans.grid[item, pos]
            assert torch.equal(grid[:, 1], torch.arange(n_tiles).repeat_interleave(ti.TOKENS_PER_TILE))
            assert torch.equal(grid[:, 2:], torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]]).repeat(n_tiles, 1))
            if n_tiles > 1:
                want_thumb += pos[-ti.TOKENS_PER_TILE:].tolist()
        assert thumb.tolist() == want_thumb
    values = torch.arange(spans.seq_len, dtype=torch.float32)
    tile = spans.to_grid(values, image=1, batch=1, tile=3)  # the thumbnail of item 1's second image
    assert tile.shape == (2, 2) and tile.flatten().tolist() == spans.positions("thumbnail", 1).float().tolist()


def test_prepare_inputs_runs_hf_processor_and_matches_hf():
    """model.prepare_inputs goes through HF's InternVLProcessor code (the folder's tokenizer + GotOcr2 PIL image
    processor); a 24 x 8 image gives 3 tiles + a thumbnail; the logits equal HF's (generation: test_parity)."""
    b = ti.internvl("qwen2")
    inputs = b.model.prepare_inputs(images=[ti.tiny.pil_image(3, 24).resize((24, 8))],
                                    text=["USER: <IMG_CONTEXT> what is this ? ASSISTANT:"])
    assert inputs["pixel_values"].shape == (4, 3, ti.TILE, ti.TILE)
    assert int((inputs["input_ids"] == ti.IMAGE_TOKEN).sum()) == 4 * ti.TOKENS_PER_TILE
    with torch.no_grad():
        assert _max(b.hf(**inputs).logits, b.model(**inputs)) <= ATOL


def test_final_layernorm_variant_matches_hf():
    """use_mean_pooling=False: HF's last_hidden_state is the last layer after a LayerNorm (vision.ln_post)."""
    folder, hf = ti.make_internvl("qwen2", vision=ti.vision_config("qwen2", use_mean_pooling=False), seed=1)
    model = HookedVLM.from_pretrained(str(folder))
    assert model.cfg.vision.kind == "vit_post_norm"
    pixels = torch.randn(3, 3, ti.TILE, ti.TILE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf.model.get_image_features(pixels).pooler_output
        ours = model.projector(model.vision(pixels))
    assert _max(ref, ours) <= ATOL


def _hf_config(text: dict | None = None, vision: dict | None = None, **top):
    from transformers import InternVLConfig

    return InternVLConfig(text_config=text or ti.text_config(), vision_config=vision or ti.vision_config(),
                          image_token_id=ti.IMAGE_TOKEN, **top)


@pytest.mark.parametrize("change, words", [
    (dict(vision_feature_select_strategy="full"), ["vision_feature_select_strategy='full'", "class token"]),
    (dict(downsample_ratio=0.3), ["downsample_ratio=0.3", "inverse of an integer"]),
    (dict(text=ti.text_config(model_type="llama")), ["text_config.model_type='llama'", "qwen2, qwen3"]),
    (dict(vision=ti.vision_config("qwen3", use_mean_pooling=False)), ["use_mean_pooling=False", "rms_norm"]),
    (dict(vision=ti.vision_config(image_size=[8, 16])), ["image_size=[8, 16]", "square"]),
    (dict(vision=ti.vision_config(num_attention_heads=2, hidden_size=16, norm_type="batch_norm")), ["norm_type='batch_norm'"]),
])
def test_refusals_name_the_field_and_the_value(change, words):
    convert = get_converter("InternVLForConditionalGeneration").make_config
    with pytest.raises(UnsupportedConfigError) as err:
        convert(_hf_config(**change))
    assert all(w in str(err.value) for w in words), str(err.value)


def test_accepted_fields_that_do_not_change_the_numbers():
    """Dropouts, the layer-scale init value and image_seq_length (a processor setting) are accepted with any value;
    the converted settings follow the fields HF reads."""
    cfg = get_converter("InternVLForConditionalGeneration").make_config(_hf_config(
        vision=ti.vision_config(hidden_dropout_prob=0.3, projection_dropout=0.2, layer_scale_init_value=1e-5),
        image_seq_length=999, downsample_ratio=0.5, projector_hidden_act="silu"))
    assert cfg.projector.extra["scale_factor"] == 2 and cfg.projector.act_fn == "silu"


def test_dynamic_rope_is_exact_below_max_positions_and_refused_beyond():
    """InternVL3's LMs have dynamic-NTK RoPE: HF's rotary table equals ours while positions stay below
    max_position_embeddings (the parity cases run there) and is rescaled once a sequence is longer; such a forward
    raises here (the plain table would be wrong: HF's differs from it)."""
    b = ti.internvl("qwen2")
    assert b.model.cfg.text.rope_parameters["rope_type"] == "dynamic"
    hf_rotary = b.hf.model.language_model.rotary_emb
    x = torch.zeros(1, dtype=torch.float32)
    short = torch.arange(ti.MAX_POSITIONS)[None]
    long = torch.arange(ti.MAX_POSITIONS + 6)[None]
    with torch.no_grad():
        cos, _ = b.model.rotary(short, torch.float32)
        assert _max(hf_rotary(x, short)[0], cos[:, :, 0]) <= 1e-6
        rescaled = hf_rotary(x, long)[0]
        hf_rotary(x, short)  # HF resets its table for sequences below max_position_embeddings (its own rule)
        plain = torch.cat([long[..., None].float() * b.model.rotary.inv_freq] * 2, -1).cos()
    assert _max(rescaled, plain) > 1e-2
    with pytest.raises(ValueError, match=r"beyond max_position_embeddings=64 .*dynamic NTK"):
        b.model(input_ids=torch.randint(4, 90, long.shape, generator=torch.Generator().manual_seed(0)))


def test_marker_ids_come_from_the_tokenizer_or_its_files():
    """<img> / </img> ids (spans boi / eoi) from a bare tokenizer, and from the tokenizer files when the processor
    and the tokenizer class both failed to load."""
    import copy

    from converters.internvl import internvl_finalize
    from hooked_vlm.processors import UnavailableProcessor

    b = ti.internvl("qwen2")
    assert (b.model.cfg.roles.boi_token_id, b.model.cfg.roles.eoi_token_id) == (ti.START, ti.END)
    for processor in (ti.tokenizer(), UnavailableProcessor(b.folder, "failed", "a test", "none")):
        cfg = copy.deepcopy(b.model.cfg)
        cfg.roles.boi_token_id = cfg.roles.eoi_token_id = None
        internvl_finalize(cfg, processor)
        assert (cfg.roles.boi_token_id, cfg.roles.eoi_token_id) == (ti.START, ti.END), type(processor)
    cfg = copy.deepcopy(b.model.cfg)
    cfg.roles.boi_token_id = None
    internvl_finalize(cfg, None)  # no tokenizer at all: no marker spans, no error
    assert cfg.roles.boi_token_id is None
