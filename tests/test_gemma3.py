"""Gemma 3 (Gemma3ForConditionalGeneration) against HF on a tiny random checkpoint (tests/tiny_gemma3.py).

Tolerances: fp32, 1e-4 absolute on logits / residuals / vision states (as tests/test_parity.py), 1e-5 between our
fast (SDPA) and explicit attention paths. The batch has left padding, prompts longer than the sliding window (8)
with a 16-token image inside, and two images in one prompt.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

from converters import get_converter
from converters.base import UnsupportedConfigError
from hooked_vlm import HookedVLM
from hooked_vlm.analysis.knockout import knockout_hooks
from tests import tiny
from tests import tiny_gemma3 as tg
from tests.tiny import max_abs_diff as _max, pattern_hooks as _pattern_hooks, real_positions as _real  # the shared comparison helpers

ATOL = 1e-4
REAL_CONFIGS = sorted((Path(__file__).parent / "real_configs").glob("google__gemma-3-*.json"))


@functools.lru_cache(maxsize=None)
def built():
    folder, hf, inputs = tg.gemma3_case()
    return folder, hf, HookedVLM.from_pretrained(str(folder)), inputs


def test_logits_match_hf_on_default_and_explicit_paths():
    _, hf, model, inputs = built()
    real = _real(inputs)
    with torch.no_grad():
        ref = hf(**inputs).logits
        fast = model(**inputs)
        explicit = model.run_with_hooks(**inputs, fwd_hooks=_pattern_hooks(model))
    assert torch.isfinite(fast).all()
    assert _max(ref, fast, real) <= ATOL
    assert _max(ref, explicit, real) <= ATOL


def test_right_padded_batch_matches_hf_on_both_paths():
    _, hf, model, _ = built()
    inputs = tg.gemma3_batch(hf, [2, 1], [0, 7], seed=1, right=True)
    real = _real(inputs)
    with torch.no_grad():
        ref = hf(**inputs).logits
        assert _max(ref, model(**inputs), real) <= ATOL
        assert _max(ref, model.run_with_hooks(**inputs, fwd_hooks=_pattern_hooks(model)), real) <= ATOL


def test_every_residual_matches_hf_hidden_states():
    _, hf, model, inputs = built()
    real = _real(inputs)
    with tiny.final_norm_input(hf) as last, torch.no_grad():
        ref = hf(**inputs, output_hidden_states=True).hidden_states
        _, cache = model.run_with_cache(**inputs)
    n = model.cfg.n_layers
    assert len(ref) == n + 1
    assert _max(ref[0], cache["hook_embed"], real) <= ATOL  # scaled token embeddings + image embeddings
    for layer in range(n):  # the last block against HF's final-norm input (hidden_states[n] is after the norm)
        hf_state = ref[layer + 1] if layer < n - 1 else last["x"]
        assert _max(hf_state, cache[f"blocks.{layer}.hook_resid_post"], real) <= ATOL, f"layer {layer}"
    assert _max(ref[n], cache["ln_final.hook_normalized"], real) <= ATOL  # HF's last entry is after the final norm


def test_vision_layers_and_projector_match_hf():
    _, hf, model, inputs = built()
    with torch.no_grad():
        ref = hf.model.vision_tower(inputs["pixel_values"], output_hidden_states=True)
        image_features = hf.model.get_image_features(inputs["pixel_values"]).pooler_output
        _, cache = model.run_with_cache(**inputs, names_filter=lambda n: n.startswith(("vision.", "projector.")))
    assert _max(ref.hidden_states[0], cache["vision.hook_embed"]) <= ATOL
    for layer in range(model.cfg.vision.tower.n_layers):
        assert _max(ref.hidden_states[layer + 1], cache[f"vision.blocks.{layer}.hook_resid_post"]) <= ATOL
    assert _max(ref.last_hidden_state, cache["vision.ln_post.hook_normalized"]) <= ATOL
    assert _max(ref.last_hidden_state, cache["projector.hook_in"]) <= ATOL
    assert cache["projector.hook_pooled"].shape == (4, tg.N_IMAGE_TOKENS, 32)
    assert _max(image_features, cache["projector.hook_out"]) <= ATOL


def test_parity_batch_is_longer_than_the_window_with_an_image_inside_and_the_window_acts(monkeypatch):
    """The batch tests/test_parity.py's "gemma3" case compares with HF: every real prompt is longer than twice the
    sliding window (8), each image (16 tokens) is longer than the window and sits inside the prompt (text before and
    after it, the last token too far back to see all of it on sliding layers); without the window our logits leave
    HF's by far, so the parity there tests the sliding layers with an image inside the prompt."""
    from tests.test_parity import built as parity_built

    b = parity_built("gemma3")
    model, inputs = b.model, b.inputs
    real = _real(inputs)
    window = model.cfg.text.sliding_window
    assert window == tg.SLIDING_WINDOW < tg.N_IMAGE_TOKENS and int(real.sum(1).min()) > 2 * window
    for row, mask in zip(inputs["input_ids"], real):
        ids = row[mask]
        image = (ids == tg.IMAGE_TOKEN).nonzero().flatten()
        # text before and after the image; the last token's sliding layers cannot see the image's first tokens
        assert len(image) >= tg.N_IMAGE_TOKENS and int(image[0]) > 1 and int(image[-1]) < len(ids) - 2
        assert len(ids) - 1 - int(image[0]) >= window
    with torch.no_grad():
        ref = b.hf(**inputs).logits
        assert _max(ref, model(**inputs), real) <= ATOL
        monkeypatch.setattr(model.cfg.text, "sliding_window", 10_000)
        assert _max(ref, model(**inputs), real) > 10 * ATOL


def test_fast_and_explicit_paths_agree():
    _, _, model, inputs = built()
    real = _real(inputs)
    keep = lambda n: n.endswith(("hook_z", "hook_resid_post"))  # noqa: E731
    _, fast = model.run_with_cache(**inputs, names_filter=keep)
    _, slow = model.run_with_cache(**inputs, names_filter=lambda n: keep(n) or n.endswith("hook_pattern"))
    for key in fast.keys():
        if key.startswith("blocks."):
            assert _max(fast[key], slow[key], real) <= 1e-5, key
    pattern = slow["blocks.1.attn.hook_pattern"]  # a full-attention layer: rows sum to 1 over allowed keys
    assert (pattern.sum(-1).transpose(1, 2)[real] - 1).abs().max().item() <= 1e-5


def _hf_masks(hf, inputs, bidirectional: bool):
    from transformers.masking_utils import create_masks_for_generate
    from transformers.models.gemma3 import modeling_gemma3 as mg

    ids = inputs["input_ids"]
    kwargs = dict(config=hf.config.get_text_config(), inputs_embeds=torch.zeros(*ids.shape, 1),
                  attention_mask=inputs["attention_mask"], past_key_values=None,
                  position_ids=torch.arange(ids.shape[1])[None])
    if bidirectional:
        blocks = mg.get_block_sequence_ids_for_mask(inputs["token_type_ids"])
        return mg.create_masks_for_vision_model(block_sequence_ids=blocks, **kwargs)
    return create_masks_for_generate(**kwargs)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_hook_mask_of_every_layer_equals_hf_mask(bidirectional):
    """Our per-layer bool mask (blocks.{l}.attn.hook_mask) is HF's mask for that layer's kind, row for row."""
    _, hf, model, inputs = built()
    if not bidirectional:
        inputs = {k: v for k, v in inputs.items() if k != "token_type_ids"}
    ref = _hf_masks(hf, inputs, bidirectional)
    _, cache = model.run_with_cache(**inputs, names_filter=lambda n: n.endswith("hook_mask"))
    real = _real(inputs)
    for layer, kind in enumerate(tg.LAYER_TYPES):
        ours = cache[f"blocks.{layer}.attn.hook_mask"][:, 0]  # [batch, q, k]
        assert torch.equal(ours[real], ref[kind][:, 0][real]), (layer, kind)
    # the policy is visible: an early image token of a sliding layer sees a later token of its own image ...
    ids = inputs["input_ids"][1]
    first = int((ids == tg.IMAGE_TOKEN).nonzero()[0])
    sliding = cache["blocks.0.attn.hook_mask"][1, 0]
    assert bool(sliding[first, first + 15]) == bidirectional
    assert not bool(sliding[first + 15, first + 15 - tg.SLIDING_WINDOW])  # ... but not a key beyond the window


def test_token_type_ids_switch_the_bidirectional_mask_as_in_hf():
    """HF builds the image-bidirectional mask only when token_type_ids is passed (the processor always passes it)."""
    _, hf, model, inputs = built()
    causal_inputs = {k: v for k, v in inputs.items() if k != "token_type_ids"}
    real = _real(inputs)
    with torch.no_grad():
        ref = hf(**causal_inputs).logits
        ours = model(**causal_inputs)
        bidi = model(**inputs)
    assert _max(ref, ours, real) <= ATOL
    assert _max(bidi, ours, real) > 1e-3  # the two masks differ in the numbers: the parity tests test the policy


def test_token_type_ids_that_do_not_mark_the_image_tokens_are_refused():
    _, _, model, inputs = built()
    bad = dict(inputs, token_type_ids=torch.zeros_like(inputs["token_type_ids"]))
    with pytest.raises(ValueError, match="does not mark exactly the image tokens"):
        model(**bad)


@pytest.mark.parametrize("use_kv_cache", [True, False])
def test_greedy_generate_matches_hf(use_kv_cache):
    _, hf, model, inputs = built()
    with torch.no_grad():
        ref = hf.generate(**inputs, max_new_tokens=10, do_sample=False)
    ours = model.generate(**inputs, max_new_tokens=10, return_type="tokens", use_kv_cache=use_kv_cache)
    assert ref.shape[1] == inputs["input_ids"].shape[1] + 10
    assert torch.equal(ref, ours)


def _processor_inputs(model, **kwargs):
    prompts = ["USER: <start_of_image> what is this ? <start_of_image> and this ? ASSISTANT:",
               "USER: describe <start_of_image> ASSISTANT:"]
    images = [tiny.pil_image(0, 24), tiny.pil_image(1, 20), tiny.pil_image(2, 28)]
    return model.prepare_inputs(images=images, text=prompts, padding_side="left", **kwargs)


def test_spans_from_the_real_processor():
    _, hf, model, _ = built()
    inputs = _processor_inputs(model)
    assert set(inputs) == {"input_ids", "attention_mask", "pixel_values", "token_type_ids", "num_crops"}
    assert inputs["num_crops"].tolist() == [0, 0, 0]  # no pan-and-scan: no image is a crop
    with torch.no_grad():
        ref = hf(**inputs).logits
    logits, cache = model.run_with_cache(**inputs, names_filter="hook_embed")
    assert _max(ref, logits, _real(inputs)) <= ATOL
    spans = cache.spans
    assert "crop" not in spans and all(lay.crop_of is None for item in spans.layouts for lay in item)
    ids = inputs["input_ids"]
    for b, n_images in ((0, 2), (1, 1)):
        assert spans.n_images(b) == n_images
        boi, eoi = spans.positions("boi", b), spans.positions("eoi", b)
        assert ids[b, boi].eq(tg.BOI).all() and ids[b, eoi].eq(tg.EOI).all() and len(boi) == len(eoi) == n_images
        for i in range(n_images):
            pos = spans.positions(f"image.{i}", b)
            assert pos.tolist() == list(range(int(boi[i]) + 1, int(eoi[i])))  # boi, 16 image tokens, eoi
            grid = spans.grid[b, pos]
            assert grid[:, 0].eq(i).all() and grid[:, 1].eq(0).all()
            assert grid[:, 2].tolist() == [r for r in range(4) for _ in range(4)]  # 4x4 pooled grid, row-major
            assert grid[:, 3].tolist() == list(range(4)) * 4
    assert spans.positions("last", 0).tolist() == [ids.shape[1] - 1]
    assert model.to_str_tokens(inputs, batch=1).count("<img 3,3>") == 1


def test_prepare_inputs_needs_one_image_per_placeholder():
    _, _, model, _ = built()
    with pytest.raises(ValueError, match="placeholders"):
        model.prepare_inputs(images=[tiny.pil_image(0)], text=["<start_of_image> a", "<start_of_image> b"])


def test_pan_and_scan_crops_are_images_of_their_own():
    """do_pan_and_scan (the real processor): every original image and each of its crops get their own boi / 16 tokens
    / eoi and image.{i}; each crop's layout names the image it was cut from and its crop index (span ``crop``), counted
    within its batch item. Item 0: a wide image (3 crops) and a square one (none); item 1: a tall image (2 crops)."""
    _, hf, model, _ = built()
    from PIL import Image

    wide = tiny.pil_image(3, 64).resize((64, 20), Image.BILINEAR)
    tall = tiny.pil_image(4, 64).resize((20, 44), Image.BILINEAR)
    inputs = model.prepare_inputs(images=[wide, tiny.pil_image(5, 24), tall], padding_side="left",
                                  text=["USER: <start_of_image> and <start_of_image> what ?", "<start_of_image> this"],
                                  do_pan_and_scan=True, pan_and_scan_min_crop_size=4)
    assert inputs["num_crops"].tolist() == [3, 0, 2] and inputs["pixel_values"].shape[0] == 8
    with torch.no_grad():
        ref = hf(**inputs).logits
    logits, cache = model.run_with_cache(**inputs, names_filter="hook_embed")
    assert _max(ref, logits, _real(inputs)) <= ATOL
    spans = cache.spans
    assert [spans.n_images(b) for b in (0, 1)] == [5, 3] and len(spans.positions("eoi", 0)) == 5
    labels = [[(lay.crop_of, lay.crop_index) for lay in spans.layouts[b]] for b in (0, 1)]
    assert labels == [[(None, None), (0, 0), (0, 1), (0, 2), (None, None)], [(None, None), (0, 0), (0, 1)]]
    for b, crops in ((0, (1, 2, 3)), (1, (1, 2))):
        in_crops = torch.zeros_like(spans.mask("crop")[b])
        for i in crops:
            in_crops[spans.positions(f"image.{i}", b)] = True
        assert torch.equal(spans.mask("crop")[b], in_crops)
        assert spans.grid[b, spans.positions(f"image.{crops[-1]}", b), 0].eq(crops[-1]).all()


@pytest.mark.parametrize("src,dst", [("image", "last"), ("image", "image")])
def test_mask_knockout_equals_hf_with_the_edges_removed_by_hand(src, dst):
    """knockout mode "mask" (an edit of hook_mask) on the bidirectional model == HF given its own per-kind masks
    with the src -> dst edges set to False by hand (HF's Gemma3Model takes a prepared mask mapping as is)."""
    _, hf, model, inputs = built()
    masks = _hf_masks(hf, inputs, bidirectional=True)
    ids = inputs["input_ids"]
    is_image = (ids == tg.IMAGE_TOKEN) & _real(inputs)
    is_last = torch.zeros_like(is_image)
    is_last[:, -1] = True  # left padding: the last position is every item's last token
    q = is_last if dst == "last" else is_image
    blocked = q[:, None, :, None] & is_image[:, None, None, :]
    edited = {kind: m & ~blocked for kind, m in masks.items()}
    hf_inputs = {k: v for k, v in inputs.items() if k not in ("attention_mask", "token_type_ids")}
    with torch.no_grad():
        ref = hf(**hf_inputs, attention_mask=edited).logits
        base = model(**inputs)
        ours = model.run_with_hooks(**inputs, fwd_hooks=knockout_hooks(model, src=src, dst=dst, mode="mask"))
    real = _real(inputs)
    assert _max(ref, ours, real) <= ATOL
    assert _max(base, ours, is_last) > 1e-3  # the knockout changed the answer position


@pytest.mark.parametrize("path", REAL_CONFIGS, ids=[p.stem for p in REAL_CONFIGS])
def test_real_config_settings(path):
    """tests/test_real_configs.py maps every tensor of HF's meta model for these configs onto ours (in-memory AND
    save_pretrained names, the legacy `language_model.model.*` layout among them); here: the settings read from
    the config are Gemma 3's."""
    from hooked_vlm.loading import converter_for
    from tests.test_real_configs import config_folder, hf_meta_model, saved_names

    hf_config, _, cfg = converter_for(config_folder(path))
    assert any(k.startswith("language_model.model.") for k in saved_names(hf_meta_model(hf_config)))
    assert cfg.text.layer_types == tuple(hf_config.text_config.layer_types)
    assert cfg.text.attn_scale == hf_config.text_config.query_pre_attn_scalar ** -0.5


@pytest.mark.parametrize("field,value", [("attn_logit_softcapping", 30.0), ("final_logit_softcapping", 30.0),
                                         ("use_bidirectional_attention", True)])
def test_unimplemented_fields_are_refused(field, value):
    from transformers import Gemma3Config

    hf_config = Gemma3Config(text_config=tg.gemma3_text_config(**{field: value}), vision_config=tg.siglip_vision_config(),
                             image_token_index=tg.IMAGE_TOKEN, mm_tokens_per_image=tg.N_IMAGE_TOKENS)
    with pytest.raises(UnsupportedConfigError, match=field):
        get_converter("Gemma3ForConditionalGeneration").make_config(hf_config)


def test_real_gemma3_4b_settings():
    """What the converter reads from the 4B config: head_dim 256 (a default; 2560 / 8 = 320), 1 + w norms,
    embeddings x sqrt(2560), global rope 1e6 linear x8 on every 6th layer, local 10k with a 1024 window."""
    from transformers import AutoConfig

    path = Path(__file__).parent / "real_configs" / "google__gemma-3-4b-it.json"
    hf_config = AutoConfig.for_model(**json.loads(path.read_text()))
    t = get_converter("Gemma3ForConditionalGeneration").make_config(hf_config).text
    assert (t.d_head, t.n_heads, t.n_key_value_heads, t.norm_offset, t.sliding_window) == (256, 8, 4, 1.0, 1024)
    assert t.embed_scale == 2560 ** 0.5 and t.attn_scale == 256 ** -0.5
    assert [i for i, k in enumerate(t.layer_types) if k == "full_attention"] == [5, 11, 17, 23, 29]
    assert t.layer_rope_parameters["full_attention"] == {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0}
    assert t.layer_rope_parameters["sliding_attention"] == {"rope_type": "default", "rope_theta": 10_000.0}


def test_logit_lens_of_every_layer_equals_hf_norm_and_head():
    """lens_logits (our final (1 + w) norm + unembed) of blocks.{l}.hook_resid_post == HF's norm + lm_head applied to
    hidden_states[l + 1]."""
    from hooked_vlm.analysis.logit_lens import lens_logits

    _, hf, model, inputs = built()
    real = _real(inputs)
    n = model.cfg.n_layers
    with tiny.final_norm_input(hf) as last, torch.no_grad():
        hidden = hf(**inputs, output_hidden_states=True).hidden_states
    with torch.no_grad():
        _, cache = model.run_with_cache(**inputs, names_filter=lambda n: n.endswith("hook_resid_post"))
        for layer in range(n):  # the last block's state is HF's final-norm input
            ref = hf.lm_head(hf.model.language_model.norm(hidden[layer + 1] if layer < n - 1 else last["x"]))
            assert _max(ref, lens_logits(model, cache[f"blocks.{layer}.hook_resid_post"]), real) <= ATOL, layer


def test_bf16_norms_embeddings_and_projector_round_as_hf():
    """In bf16 the Gemma-specific pieces round exactly as HF's: (1 + w) RMSNorm computed in float32 then cast, the
    sqrt(d_model) embedding scale cast to bf16 before the multiply, the projector's norm + matmul."""
    import copy

    folder, hf, _, inputs = built()
    hfb = copy.deepcopy(hf).to(torch.bfloat16)
    ours = HookedVLM.from_pretrained(str(folder), dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(2, 50, 32, generator=g) * 3).to(torch.bfloat16)
    feats = torch.randn(2, 64, 32, generator=g).to(torch.bfloat16)
    ids = inputs["input_ids"]
    with torch.no_grad():
        assert torch.equal(ours.ln_final(x), hfb.model.language_model.norm(x))
        assert torch.equal(ours.blocks[1].ln2_post(x), hfb.model.language_model.layers[1].post_feedforward_layernorm(x))
        heads = x.view(2, 50, 4, 8)
        assert torch.equal(ours.blocks[0].attn.q_norm(heads), hfb.model.language_model.layers[0].self_attn.q_norm(heads))
        assert torch.equal(ours.embed(ids), hfb.model.language_model.embed_tokens(ids))
        assert torch.equal(ours.projector(feats), hfb.model.multi_modal_projector(feats))


@pytest.mark.parametrize("fields,match", [
    (dict(layer_types=("sliding_attention",) * 3), "one of"),
    (dict(layer_types=("sliding_attention", "global")), "unknown kinds"),
    (dict(layer_types=("sliding_attention", "full_attention")), "sliding_window is None"),
    (dict(layer_types=("full_attention",) * 2, layer_rope_parameters={"sliding_attention": {}}), "no entry"),
    (dict(layer_rope_parameters={"full_attention": {}}), "needs layer_types"),
    (dict(mask_policy="prefix_lm"), "mask_policy must be"),
    (dict(mask_policy="causal+image_bidirectional", causal=False), "not causal"),
    (dict(norm_placement="post"), "norm_placement must be"),
])
def test_bad_tower_fields_are_explained(fields, match):
    from hooked_vlm.config import TowerConfig

    with pytest.raises(ValueError, match=match):
        TowerConfig(n_layers=2, d_model=8, n_heads=2, d_mlp=16, **fields)
