"""Ovis 2 (Ovis2ForConditionalGeneration) against HF on tiny random checkpoints (tests/tiny_ovis2.py).

Logits, LM residuals, both attention paths and greedy generation (with and without the KV cache) are
tests/test_parity.py's (case ovis2); golden hook names and every-hook-fires are tests/test_hooks.py's. Here: every
layer of the AIMv2-style tower, each stage of the visual tokenizer (folded features, visual logits, visual-word
probabilities, embeddings) and the indicator embeddings against HF, the spans of the processor's crop layout, the
straight-through arg-max variant, bad prompts and the refusals.
Tolerances: fp32, 1e-4 absolute against HF (as test_parity).
"""

from __future__ import annotations

import functools

import pytest
import torch

from converters import get_converter
from converters.base import UnsupportedConfigError
from hooked_vlm import HookedVLM
from tests import tiny_ovis2 as to
from tests.test_parity import AttentionPaths
from tests.tiny import max_abs_diff as _max

ATOL = 1e-4


@functools.lru_cache(maxsize=None)
def hf_vision(explicit: bool = False):
    """HF's tower and visual tokenizer on the padded batch's crops: the embeddings, each encoder layer's output, the
    final norm's output, the head norm's output (visual logits), the probabilities and the image features."""
    b = to.ovis2()
    vt = b.hf.model.vision_tower
    seen: dict[str, torch.Tensor] = {}
    modules = {"embed": vt.transformer.embeddings, "post": vt.transformer.rms_norm, "logits": vt.head_norm,
               **{f"layer{l}": layer for l, layer in enumerate(vt.transformer.encoder.layers)}}
    handles = [m.register_forward_hook(lambda mod, args, out, name=name: seen.__setitem__(name, out))
               for name, m in modules.items()]
    try:
        with torch.no_grad():
            tower = vt(b.inputs["pixel_values"])
            image = b.hf.model.get_image_features(b.inputs["pixel_values"])
    finally:
        for h in handles:
            h.remove()
    return seen, tower, image


@pytest.mark.parametrize("explicit", [False, True])
def test_every_vision_layer_and_each_visual_tokenizer_stage_match_hf(explicit):
    """vision.hook_embed = normed patches + positions; blocks.{l}.hook_resid_post = HF's layer l; ln_post = HF's final
    RMS norm; projector.hook_merged = HF's folded last_hidden_state; hook_visual_logits = head_norm's output;
    hook_visual_probs = HF's pooler_output (+ zero marker columns); hook_out = HF's image features; hook_marker_embeds =
    HF's visual_indicator_features. ``explicit``: every vision hook_pattern hooked."""
    b = to.ovis2()
    seen, tower, image = hf_vision()
    n = b.model.cfg.vision.tower.n_layers
    hooks = [(f"vision.blocks.{l}.attn.hook_pattern", lambda t, hook: t) for l in range(n)] if explicit else []
    keep = lambda name: name.startswith(("vision.", "projector.")) and not name.endswith(("hook_pattern", "scores"))  # noqa: E731
    with AttentionPaths() as calls, torch.no_grad(), b.model.hooks(fwd_hooks=hooks):
        _, cache = b.model.run_with_cache(**b.inputs, names_filter=keep)
    assert calls["explicit"] == (n if explicit else 0), calls  # the vision layers' path (the LM's stays fast)
    assert _max(seen["embed"], cache["vision.hook_embed"]) <= ATOL
    for layer in range(n):
        assert _max(seen[f"layer{layer}"], cache[f"vision.blocks.{layer}.hook_resid_post"]) <= ATOL, f"layer {layer}"
    assert _max(seen["post"], cache["vision.ln_post.hook_normalized"]) <= ATOL
    assert _max(tower.last_hidden_state, cache["projector.hook_merged"]) <= ATOL  # [crop, 4, 4 * 16]
    assert _max(seen["logits"], cache["projector.hook_visual_logits"]) <= ATOL  # [crop, 4, 24]
    probs = cache["projector.hook_visual_probs"]  # [crop, 4, 29]: the 5 marker columns are 0
    n_words = tower.pooler_output.shape[-1]
    assert probs.shape[-1] == n_words + 5 and bool((probs[..., n_words:] == 0).all())
    assert _max(tower.pooler_output, probs[..., :n_words]) <= ATOL
    assert _max(probs.sum(-1), torch.ones(probs.shape[:-1])) <= 1e-5
    assert _max(image.pooler_output, cache["projector.hook_out"]) <= ATOL
    assert _max(image.visual_indicator_features, cache["projector.hook_marker_embeds"]) <= ATOL


def test_indicator_tokens_are_embedded_by_the_table_only_with_images():
    """With images, every indicator token's embedding is its table row (as HF); hook_marker_embeds' edit reaches
    exactly those positions. A text-only prompt holding indicator ids keeps their token embeddings, as in HF."""
    b = to.ovis2()
    ids = b.inputs["input_ids"]
    markers = torch.isin(ids, torch.tensor(to.MARKERS_IDS))
    with torch.no_grad():
        _, cache = b.model.run_with_cache(**b.inputs, names_filter=["hook_embed", "projector.hook_marker_embeds"])
    rows = cache["projector.hook_marker_embeds"]
    for k, token in enumerate(to.MARKERS_IDS):
        at = ids == token
        assert at.any() and _max(cache["hook_embed"][at], rows[k].expand(int(at.sum()), -1)) == 0.0
    zeroed = lambda t, hook: torch.zeros_like(t)  # noqa: E731
    with torch.no_grad(), b.model.hooks(fwd_hooks=[("projector.hook_marker_embeds", zeroed)]):
        _, edited = b.model.run_with_cache(**b.inputs, names_filter="hook_embed")
    assert bool((edited["hook_embed"][markers] == 0).all())
    assert _max(edited["hook_embed"][~markers], cache["hook_embed"][~markers]) == 0.0
    text_only = {"input_ids": torch.tensor([[to.BOS, 7, to.START, 8, to.GRID, to.END, 9]]),
                 "attention_mask": torch.ones(1, 7, dtype=torch.long)}
    with torch.no_grad():
        ref = b.hf(**text_only, output_hidden_states=True)
        _, plain = b.model.run_with_cache(**text_only, names_filter="hook_embed")
    assert _max(ref.hidden_states[0], plain["hook_embed"]) <= ATOL
    assert _max(ref.hidden_states[0][0, 2], b.model.embed.weight[to.START]) == 0.0


def test_spans_follow_the_processors_crop_layout():
    """Item 0's 8 x 16 image: HF's covering-area rule picks a 2 x 1 grid -> thumbnail + 2 crops; item 1: an 8 x 8 image
    (one crop, no thumbnail) and a 16 x 24 image (2 x 2 grid -> thumbnail + 4 crops). Each crop is 4 tokens on a 2 x 2
    grid; the thumbnail is each multi-crop image's FIRST crop; markers get their own spans."""
    b = to.ovis2()
    with torch.no_grad():
        _, cache = b.model.run_with_cache(**b.inputs, names_filter="hook_embed")
    spans, ids = cache.spans, b.inputs["input_ids"]
    assert [[(l.tiles, l.tile_grid, l.thumbnail) for l in item] for item in spans.layouts] == [
        [(3, (2, 1), True)], [(1, (1, 1), False), (5, (2, 2), True)]]
    per = to.TOKENS_PER_CROP
    for name, token in (("boi", to.START), ("eoi", to.END), ("grid_marker", to.GRID), ("crop_col_break", to.COL),
                        ("crop_row_break", to.ROW)):
        assert torch.equal(spans.mask(name), ids == token), name
    assert spans.positions("crop_col_break", 0).numel() == 0 and spans.positions("crop_col_break", 1).numel() == 2
    for item, layouts in enumerate(spans.layouts):
        want_thumb = []
        for image, layout in enumerate(layouts):
            pos = spans.positions(f"image.{image}", item)
            assert pos.numel() == layout.tiles * per
            grid = spans.grid[item, pos]
            assert torch.equal(grid[:, 1], torch.arange(layout.tiles).repeat_interleave(per))
            assert torch.equal(grid[:, 2:], torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]]).repeat(layout.tiles, 1))
            # <IMG_START> first crop (the thumbnail when there are more) <IMG_GRID> ... <IMG_END>
            assert ids[item, pos[0] - 1] == to.START and ids[item, pos[per - 1] + 1] == to.GRID
            assert ids[item, pos[-1] + 1] == (to.GRID if layout.tiles == 1 else to.END)
            if layout.thumbnail:
                want_thumb += pos[:per].tolist()
        assert spans.positions("thumbnail", item).tolist() == want_thumb
    values = torch.arange(spans.seq_len, dtype=torch.float32)
    thumb = spans.to_grid(values, image=1, batch=1, tile=0)
    assert thumb.flatten().tolist() == spans.positions("thumbnail", 1).float().tolist()


def test_the_pixel_crops_are_in_the_order_the_tokens_say():
    """Crop k of the padded batch (pixel order) is tile k in the spans: permuting two crops of one image changes the
    image embeddings of exactly those two tiles' tokens."""
    b = to.ovis2()
    pixels = b.inputs["pixel_values"].clone()
    pixels[[5, 6]] = pixels[[6, 5]]  # item 1's second image: crops (0, 0) and (0, 1) (after its thumbnail at 4)
    with torch.no_grad():
        _, a = b.model.run_with_cache(**b.inputs, names_filter="hook_embed")
        _, c = b.model.run_with_cache(**dict(b.inputs, pixel_values=pixels), names_filter="hook_embed")
    changed = (a["hook_embed"] - c["hook_embed"]).abs().amax(-1) > 1e-6
    grid = a.spans.grid
    want = (grid[..., 0] == 1) & torch.isin(grid[..., 1], torch.tensor([1, 2])) & a.spans.mask("image.1")
    want[0] = False
    assert torch.equal(changed, want)


@pytest.mark.parametrize("edit, words", [
    (lambda row: row[: len(row) - 1 - row[::-1].index(to.END)], ["never closed"]),
    (lambda row: [t for k, t in enumerate(row) if not (t == to.IMAGE_TOKEN and k == row.index(to.IMAGE_TOKEN))],
     ["thumbnail's 4 image tokens"]),
    (lambda row: [t for t in row if t != to.ROW], ["crop runs of [4, 8, 4]", "separators"]),
    (lambda row: [t for t in row if t != to.START], ["outside the begin / end-of-image markers"]),
])
def test_malformed_crop_layouts_are_refused_with_the_fix(edit, words):
    b = to.ovis2()
    row = b.inputs["input_ids"][1].tolist()
    bad = torch.tensor([edit(row)])
    inputs = {"input_ids": bad, "attention_mask": torch.ones_like(bad), "pixel_values": b.inputs["pixel_values"][3:]}
    with pytest.raises(ValueError) as err:
        b.model(**inputs)
    assert all(w in str(err.value) for w in words) and "processor" in str(err.value), str(err.value)


def test_crop_count_must_match_pixel_values():
    b = to.ovis2()
    with pytest.raises(ValueError, match=r"announce 9 crops .* pixel_values holds 8"):
        b.model(**dict(b.inputs, pixel_values=b.inputs["pixel_values"][:8]))


def test_prepare_inputs_runs_hf_processor_and_matches_hf():
    """model.prepare_inputs goes through HF's Ovis2Processor (saved beside the checkpoint); the logits equal HF's."""
    b = to.ovis2()
    inputs = b.model.prepare_inputs(images=[to.tiny.pil_image(3, 24).resize((24, 16))],
                                    text=["USER: <image> what is this ? ASSISTANT:"])
    assert inputs["pixel_values"].shape == (5, 3, to.CROP, to.CROP)
    assert int((inputs["input_ids"] == to.IMAGE_TOKEN).sum()) == 5 * to.TOKENS_PER_CROP
    with torch.no_grad():
        assert _max(b.hf(**inputs).logits, b.model(**inputs)) <= ATOL


def test_straight_through_argmax_variant_matches_hf():
    """tokenize_function="st_argmax": each image token is one visual word (HF's forward value of the straight-through
    estimator); logits and image features equal HF's, and differ from the softmax model's."""
    folder, hf = to.make_ovis2(vision=to.vision_config(tokenize_function="st_argmax"), seed=1)
    model = HookedVLM.from_pretrained(str(folder))
    inputs = to.batch(to.processor(), [[to.SIZES[0]], [to.SIZES[1]]])
    real = inputs["attention_mask"].bool()
    with torch.no_grad():
        ref = hf(**inputs).logits
        logits, cache = model.run_with_cache(**inputs, names_filter="projector.hook_visual_probs")
        hf_features = hf.model.get_image_features(inputs["pixel_values"]).pooler_output
        soft = model.projector.head_norm(model.projector.head_linear(model.projector.merge(
            model.vision(inputs["pixel_values"])))).softmax(-1)
    probs = cache["projector.hook_visual_probs"]
    assert bool(((probs == 0) | (probs == 1)).all()) and bool((probs.sum(-1) == 1).all())
    assert _max(ref[real], logits[real]) <= ATOL
    assert _max(hf_features, model.projector(model.vision(inputs["pixel_values"]))) <= ATOL
    assert _max(soft, probs[..., : soft.shape[-1]]) > 0.1


def _hf_config(text: dict | None = None, vision: dict | None = None, **top):
    from transformers import Ovis2Config

    tc = text or to.text_config()
    kwargs = dict(text_config=tc, vision_config=vision or to.vision_config(), image_token_id=to.IMAGE_TOKEN,
                  visual_indicator_token_ids=list(to.MARKERS_IDS), vocab_size=tc["vocab_size"],
                  hidden_size=tc["hidden_size"])
    kwargs.update(top)
    return Ovis2Config(**kwargs)


@pytest.mark.parametrize("change, words", [
    (dict(vision=to.vision_config(tokenize_function="gumbel_argmax")), ["tokenize_function='gumbel_argmax'", "Gumbel"]),
    (dict(vision=to.vision_config(hidden_stride=3)), ["hidden_stride=3", "4-patch grid"]),
    (dict(hidden_size=48), ["hidden_size=48", "text_config.hidden_size=32"]),
    (dict(vocab_size=150), ["vocab_size=150", "text_config.vocab_size=120"]),
    (dict(visual_indicator_token_ids=[101, 102, 103, 104]), ["visual_indicator_token_ids=[101, 102, 103, 104]", "5"]),
    (dict(visual_indicator_token_ids=[100, 102, 103, 104, 105]), ["distinct", "image token"]),
    (dict(vision=to.vision_config(image_size=[8, 16])), ["image_size=[8, 16]", "square"]),
    (dict(text=to.text_config(model_type="gemma")), ["text_config.model_type='gemma'", "qwen2"]),
])
def test_refusals_name_the_field_and_the_value(change, words):
    convert = get_converter("Ovis2ForConditionalGeneration").make_config
    with pytest.raises(UnsupportedConfigError) as err:
        convert(_hf_config(**change))
    assert all(w in str(err.value) for w in words), str(err.value)


def test_hf_cannot_run_a_stride_that_does_not_divide_the_grid():
    """The hidden_stride refusal's reason: HF pads the token and image axes, not the grid, and its reshape fails."""
    from transformers import Ovis2ForConditionalGeneration

    torch.manual_seed(0)
    hf = Ovis2ForConditionalGeneration(_hf_config(vision=to.vision_config(hidden_stride=3))).eval()
    with pytest.raises(RuntimeError, match="shape"), torch.no_grad():
        hf.model.get_image_features(torch.randn(1, 3, to.CROP, to.CROP))


def test_the_checkpoint_exercises_what_the_parts_claim():
    """The tiny tower has every field the converter maps: biased q/k/v/out and MLP, SwiGLU, RMS norms, a normed
    patch embedding; the LM is tied (Ovis2Config's default) with GQA and q/k/v biases."""
    cfg = to.ovis2().model.cfg
    t = cfg.vision.tower
    assert cfg.vision.patch_norm and cfg.vision.kind == "vit_post_norm" and t.normalization_type == "RMS"
    assert t.attn_bias and t.attn_out_bias and t.mlp_bias and t.gated_mlp and t.act_fn == "silu"
    assert cfg.projector.kind == "visual_embedding_table" and cfg.projector.extra["hidden_stride"] == 2
    assert cfg.tie_word_embeddings and cfg.text.n_key_value_heads < cfg.text.n_heads and cfg.text.attn_bias
    assert cfg.extra["parts"] == {"tower": "ovis2_vision", "projector": "visual_embedding_table", "lm": "qwen2"}


def test_fields_of_the_original_visual_tokenizer_are_accepted():
    """HF's conversion script copies the remote-code visual tokenizer config into vision_config (tau, depths,
    drop_cls_token, backbone_kwargs, backbone_config); HF's Ovis2 never reads them, so they are accepted. A field
    nobody has checked is still refused."""
    convert = get_converter("Ovis2ForConditionalGeneration").make_config
    original = dict(tau=1.0, depths=[24], drop_cls_token=False, backbone_kwargs={},
                    backbone_config={"model_type": "aimv2", "hidden_size": 16})
    cfg = convert(_hf_config(vision=to.vision_config(**original)))
    assert cfg.vision.tower.n_layers == 3  # num_hidden_layers, what HF builds (not the original's depths)
    with pytest.raises(UnsupportedConfigError, match="use_rope=True"):
        convert(_hf_config(vision=to.vision_config(use_rope=True)))
