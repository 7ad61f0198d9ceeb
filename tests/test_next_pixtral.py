"""LLaVA-NeXT, LLaVA-OneVision, Pixtral (LLaVA form) and Mistral3: vision parity, packing, spans, refusals.

Logits / per-layer residuals / greedy generate against HF run in tests/test_parity.py (CASES);
here: the vision towers layer by layer, the packed image embeddings, the newline and block-diagonal
mechanics, and spans of inputs made by each family's real HF processor.
"""

from __future__ import annotations

import functools

import pytest
import torch

from converters import get_converter
from converters.base import UnsupportedConfigError
from hooked_vlm import HookedVLM
from tests import tiny_next_pixtral as tnp
from tests.test_parity import _built, ours_run

ATOL = 1e-4
FAMILIES = ["next-mistral-clip", "onevision-qwen2-siglip", "pixtral-llava", "mistral3-pixtral"]
ANYRES = FAMILIES[:2]
PIXTRAL = FAMILIES[2:]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def _hf_vision_call(hf, inputs):
    """The (args, kwargs) HF's own forward hands its vision tower."""
    seen = {}

    def grab(module, args, kwargs):
        seen["args"], seen["kwargs"] = args, dict(kwargs)

    handle = hf.model.vision_tower.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            out = hf(**inputs)
    finally:
        handle.remove()
    return seen, out


@functools.lru_cache(maxsize=None)
def _hf_vision_states(case_id):
    """(HF's vision hidden states, HF's image embeddings) for the case's batch, the tower called as HF's forward does."""
    hf, _, inputs = _built(case_id)
    seen, out = _hf_vision_call(hf, inputs)
    kwargs = {k: v for k, v in seen["kwargs"].items() if k == "image_sizes"}
    with torch.no_grad():
        ref = hf.model.vision_tower(*seen["args"], output_hidden_states=True, **kwargs).hidden_states
    return ref, out.image_hidden_states


@pytest.mark.parametrize("path", ["fast", "explicit"])
@pytest.mark.parametrize("case_id", FAMILIES)
def test_vision_tower_states_and_image_embeds_match_hf(case_id, path):
    _, model, _ = _built(case_id)
    ref, ref_embeds = _hf_vision_states(case_id)
    _, cache, calls = ours_run(case_id, "padded", path)  # every residual cached; explicit: hook_pattern hooked too
    assert calls["explicit" if path == "fast" else "fast"] == 0
    first = "vision.ln_pre.hook_normalized" if model.vision.ln_pre is not None else "vision.hook_embed"
    assert _max_diff(ref[0], cache[first]) <= ATOL
    n = model.cfg.vision.tower.n_layers
    assert len(ref) == n + 1
    for layer in range(n):
        assert _max_diff(ref[layer + 1], cache[f"vision.blocks.{layer}.hook_resid_post"]) <= ATOL, f"vision layer {layer}"
    ref_embeds = torch.cat(list(ref_embeds)) if isinstance(ref_embeds, (list, tuple)) else ref_embeds
    assert _max_diff(ref_embeds.reshape(-1, model.cfg.d_model), cache["hook_image_embeds"]) <= ATOL


@pytest.mark.parametrize("case_id", ANYRES)
def test_anyres_layout_newlines_and_grid(case_id):
    hf, model, inputs = _built(case_id)
    _, cache = model.run_with_cache(**inputs, names_filter="hook_embed")
    spans, embed = cache.spans, cache["hook_embed"]
    newline = model.projector.image_newline
    g = model.cfg.vision.grid_size
    for b in range(spans.batch):
        rb = spans.positions("row_break", b)
        assert len(rb) > 0 and _max_diff(embed[b, rb], newline.expand(len(rb), -1)) == 0.0
        for i, layout in enumerate(spans.layouts[b]):
            img = spans.positions(f"image.{i}", b)
            shapes = layout.shapes()
            assert shapes[0] == (g, g) and len(img) == sum(r * c for r, c in shapes)
            grid = spans.grid[b, img]
            assert (grid[:, 0] == i).all()
            for t, (r, c) in enumerate(shapes):
                cells = grid[grid[:, 1] == t]
                assert len(cells) == r * c and cells[:, 2].max() == r - 1 and cells[:, 3].max() == c - 1
            if len(shapes) == 2:  # tiled: a row break closes every row of the high-resolution grid
                first, last = int(img.min()), int(img.max())
                mine = rb[(rb > first) & (rb <= last + 1)]
                assert len(mine) == shapes[1][0]
                before = spans.grid[b, mine - 1]
                assert (before[:, 1] == 1).all() and (before[:, 3] == shapes[1][1] - 1).all()
            assert not (spans.mask("image")[b] & spans.mask("row_break")[b]).any()
            assert not (spans.mask("text")[b] & spans.mask("row_break")[b]).any()
    # a layout for to_grid: tile 1 of the first image draws back onto its rows x cols
    values = torch.arange(spans.seq_len, dtype=torch.float32)
    r, c = spans.layouts[0][0].shapes()[1]
    assert spans.to_grid(values, image=0, batch=0, tile=1).shape == (r, c)


def test_onevision_multi_image_items_are_not_tiled():
    hf, model, inputs = _built("onevision-qwen2-siglip")
    _, cache = model.run_with_cache(**inputs, names_filter="hook_embed")
    g = model.cfg.vision.grid_size
    assert [len(layout.shapes()) for layout in cache.spans.layouts[0]] == [2]  # one image: tiled
    assert [layout.shapes() for layout in cache.spans.layouts[1]] == [[(g, g)], [(g, g)]]  # two images: base only
    assert [layout.newline_offsets for layout in cache.spans.layouts[1]] == [[g * g], [g * g]]


def test_onevision_anyres_max_interpolation_matches_hf():
    folder, hf, inputs = tnp.onevision_single_case()  # anyres_max_1: the unpadded grids are shrunk
    model = HookedVLM.from_pretrained(str(folder))
    with torch.no_grad():
        ref = hf(**inputs)
        logits, cache = model.run_with_cache(**inputs, names_filter="hook_image_embeds")
    real = inputs["attention_mask"].bool()
    assert _max_diff(ref.logits[real], logits[real]) <= ATOL
    g = model.cfg.vision.grid_size
    for layout in (cache.spans.layouts[0][0], cache.spans.layouts[1][0]):
        r, c = layout.shapes()[1]
        assert r * c < 4 * g * g  # shrunk below the 2x2 tiles it came from (at most ~1 tile, as anyres_max_1 asks)


@pytest.mark.parametrize("case_id", PIXTRAL)
def test_pixtral_block_diagonal_attention(case_id):
    hf, model, inputs = _built(case_id)
    patterns = []
    hook = ("vision.blocks.0.attn.hook_pattern", lambda x, hook: patterns.append(x.clone()))
    with torch.no_grad():
        fast = model(**inputs)
        explicit = model.run_with_hooks(**inputs, fwd_hooks=[hook])
    assert _max_diff(fast, explicit) <= 1e-5
    grids = model.vision.grids(inputs["pixel_values"], inputs["image_sizes"])
    sizes = torch.tensor([h * w for h, w in grids])
    owner = torch.repeat_interleave(torch.arange(len(grids)), sizes)
    cross = owner[:, None] != owner[None, :]
    assert patterns[0].shape[-1] == int(sizes.sum())
    assert patterns[0][..., cross].abs().max().item() == 0.0
    assert torch.allclose(patterns[0].sum(-1), torch.ones(()), atol=1e-5)


@pytest.mark.parametrize("case_id", PIXTRAL)
def test_pixtral_image_alone_equals_image_in_batch(case_id):
    """Block-diagonal attention: an image's features do not depend on the other images in the batch."""
    _, model, inputs = _built(case_id)
    pv, sizes = inputs["pixel_values"], inputs["image_sizes"]
    with torch.no_grad():
        together, layouts = model.encode_images(pv, {"image_sizes": sizes})
        h, w = sizes[1].tolist()
        alone, _ = model.encode_images(pv[1:2, :, :h, :w], {"image_sizes": sizes[1:2]})
    start = layouts[0].n_tokens
    assert _max_diff(together[start : start + alone.shape[0]], alone) <= 1e-5


# ----------------------------------------------------------------------------- spans from real processors
def _runs(ids: torch.Tensor, token: int) -> list[int]:
    """Lengths of the maximal runs of ``token`` in a 1-D id sequence."""
    out, n = [], 0
    for t in ids.tolist() + [-1]:
        if t == token:
            n += 1
        elif n:
            out.append(n)
            n = 0
    return out


def _with_processor(kind: str):
    """(hf, model, processor): the shared tiny build of the family, loaded with its offline HF processor."""
    b = {"next": tnp.llava_next, "onevision": tnp.onevision, "pixtral": tnp.pixtral, "mistral3": tnp.mistral3}[kind]()
    return b.hf, b.model, b.model.processor


IMAGES = [(20, 13), (9, 30), (16, 16)]


@pytest.mark.parametrize("kind", ["next", "onevision"])
def test_anyres_spans_match_processor(kind):
    hf, model, proc = _with_processor(kind)
    images = [tnp.pil_image(h, w, i) for i, (h, w) in enumerate(IMAGES)]
    prompts = ["hello <image> what is this ?", "<image> a picture of <image> ?"]
    nested = [[images[0]], [images[1], images[2]]]  # OneVision's processor reads multi-image prompts from nesting
    inputs = model.prepare_inputs(images=nested if kind == "onevision" else images, text=prompts, padding_side="left")
    with torch.no_grad():
        ref = hf(**inputs)
        logits, cache = model.run_with_cache(**inputs, names_filter="hook_embed")
    real = inputs["attention_mask"].bool()
    assert _max_diff(ref.logits[real], logits[real]) <= ATOL
    spans, g = cache.spans, model.cfg.vision.grid_size
    multi = kind == "onevision"  # OneVision does not tile images of multi-image prompts
    image_index = 0
    for b in range(2):
        runs = _runs(inputs["input_ids"][b], tnp.IMAGE_TOKEN)
        assert len(runs) == len(spans.layouts[b])
        for i, run in enumerate(runs):
            layout = spans.layouts[b][i]
            n_newlines = len(layout.newline_offsets)
            assert len(spans.positions(f"image.{i}", b)) + n_newlines == run == layout.n_tokens
            h, w = IMAGES[image_index]
            if multi and len(runs) > 1:
                assert layout.shapes() == [(g, g)] and n_newlines == 1 and run == proc.num_image_tokens + 1
            else:
                s = model.cfg.vision.image_size
                bh, bw = tnp.select_best(h, w)
                patches = proc.num_image_tokens if multi else (s // 2)
                side = int(patches**0.5) if multi else patches
                unpadded, newlines = proc._get_unpadded_features(h, w, side, side, bh // s, bw // s)
                assert layout.shapes()[0] == (g, g) and n_newlines == newlines == layout.shapes()[1][0]
                assert layout.shapes()[1][0] * layout.shapes()[1][1] == unpadded
                assert run == proc._get_number_of_features(h, w, s, s) - (1 if not multi else 0)
            image_index += 1
    assert int(spans.mask("row_break").sum()) == sum(len(lay.newline_offsets) for item in spans.layouts for lay in item)


@pytest.mark.parametrize("kind", ["pixtral", "mistral3"])
def test_pixtral_spans_match_processor(kind):
    hf, model, proc = _with_processor(kind)
    assert model.cfg.roles.row_break_token_ids == (tnp.IMG_BREAK,) and model.cfg.roles.eoi_token_id == tnp.IMG_END
    images = [tnp.pil_image(h, w, i) for i, (h, w) in enumerate(IMAGES)]
    prompts = ["hello [IMG] what is this ?", "[IMG] a picture of [IMG] ?"]
    inputs = model.prepare_inputs(images=[[images[0]], [images[1], images[2]]], text=prompts, padding_side="left")
    with torch.no_grad():
        ref = hf(**inputs)
        logits, cache = model.run_with_cache(**inputs, names_filter="hook_embed")
    real = inputs["attention_mask"].bool()
    assert _max_diff(ref.logits[real], logits[real]) <= ATOL
    spans, ids = cache.spans, inputs["input_ids"]
    step = proc.patch_size * proc.spatial_merge_size
    sizes = iter(inputs["image_sizes"].tolist())
    for b in range(2):
        assert torch.equal(spans.mask("row_break")[b], ids[b] == tnp.IMG_BREAK)
        assert torch.equal(spans.mask("eoi")[b], ids[b] == tnp.IMG_END)
        assert torch.equal(spans.mask("image")[b], ids[b] == tnp.IMAGE_TOKEN)
        for i, layout in enumerate(spans.layouts[b]):
            h, w = next(sizes)
            assert (layout.rows, layout.cols) == (h // step, w // step)
            pos = spans.positions(f"image.{i}", b)
            assert len(pos) == layout.rows * layout.cols
            grid = spans.grid[b, pos]
            assert torch.equal(grid[:, 2], torch.arange(len(pos)) // layout.cols)
            assert torch.equal(grid[:, 3], torch.arange(len(pos)) % layout.cols)
            # the processor closes each row with [IMG_BREAK] and the last one with [IMG_END]
            ends = pos[grid[:, 3] == layout.cols - 1] + 1
            assert torch.equal(ids[b, ends[:-1]], torch.full((layout.rows - 1,), tnp.IMG_BREAK))
            assert ids[b, ends[-1]] == tnp.IMG_END
    tokens = model.to_str_tokens(inputs, batch=1)
    assert "<img 0,0>" in tokens and tokens.count("[IMG_END]") == 2


# ----------------------------------------------------------------------------- refusals
def _hf_config(kind: str, **top):
    from transformers import LlavaConfig, LlavaOnevisionConfig, Mistral3Config

    if kind == "onevision":
        return LlavaOnevisionConfig(text_config=tnp.llama_text_config(model_type="qwen2"), vision_config=tnp.siglip_vision(),
                                    image_grid_pinpoints=tnp.PINPOINTS, architectures=["LlavaOnevisionForConditionalGeneration"], **top)
    if kind == "mistral3":
        return Mistral3Config(text_config=tnp.llama_text_config(model_type="mistral"), vision_config=top.pop("vision", tnp.pixtral_vision()),
                              architectures=["Mistral3ForConditionalGeneration"], **top)
    return LlavaConfig(text_config=tnp.llama_text_config(), vision_config=top.pop("vision", tnp.pixtral_vision()),
                       architectures=["LlavaForConditionalGeneration"], **top)


@pytest.mark.parametrize("kind, top, match", [
    ("onevision", {"vision_feature_select_strategy": "default"}, "SigLIP"),
    ("onevision", {"vision_aspect_ratio": "pad"}, "vision_aspect_ratio"),
    ("mistral3", {"vision_feature_layer": [-1, -2]}, "list"),
    ("mistral3", {"vision": tnp.pixtral_vision(head_dim=16)}, "head_dim"),
    ("llava", {"vision_feature_select_strategy": "default"}, "full"),
])
def test_refuses_what_it_does_not_handle(kind, top, match):
    hf_cfg = _hf_config(kind, **top)
    with pytest.raises(UnsupportedConfigError, match=match):
        get_converter(hf_cfg.architectures[0]).make_config(hf_cfg)


def test_anyres_needs_image_sizes_and_matching_placeholders():
    _, model, inputs = _built("next-mistral-clip")
    with pytest.raises(ValueError, match="image_sizes"):
        model(**{k: v for k, v in inputs.items() if k != "image_sizes"})
    ids = inputs["input_ids"].clone()
    ids[0, ids[0].tolist().index(tnp.IMAGE_TOKEN)] = 5
    with pytest.raises(ValueError, match="image tokens"):
        model(**{**inputs, "input_ids": ids})


@pytest.mark.parametrize("case_id", FAMILIES)
def test_in_memory_key_layout_loads_too(case_id, tmp_path):
    """save_pretrained writes legacy names; hub checkpoints may hold the in-memory ones (model.*)."""
    from safetensors.torch import save_file

    hf, model, inputs = _built(case_id)
    state = {k: v.detach().clone().contiguous() for k, v in hf.state_dict().items()}
    assert any(k.startswith("model.language_model.") for k in state)
    save_file(state, str(tmp_path / "model.safetensors"))
    hf.config.save_pretrained(tmp_path)
    other = HookedVLM.from_pretrained(str(tmp_path))
    with torch.no_grad():
        assert _max_diff(model(**inputs), other(**inputs)) == 0.0


@pytest.mark.parametrize("case_id, names", [
    ("pixtral-llava", ["vision.hook_patch_embed", "vision.ln_pre.hook_normalized", "vision.blocks.0.attn.hook_rot_q",
                       "projector.hook_in", "projector.hook_out"]),
    ("mistral3-pixtral", ["vision.blocks.1.attn.hook_rot_k", "projector.hook_in", "projector.norm.hook_scale",
                          "projector.hook_merged", "projector.hook_out"]),
    ("onevision-qwen2-siglip", ["vision.hook_patch_embed", "vision.hook_embed", "projector.hook_out"]),
])
def test_family_hooks_fire_and_edits_propagate(case_id, names):
    _, model, inputs = _built(case_id)
    with torch.no_grad():
        base, cache = model.run_with_cache(**inputs, names_filter=lambda n: n in names)
        assert sorted(cache.keys()) == sorted(names)
        edited = model.run_with_hooks(**inputs, fwd_hooks=[(names[-1], lambda x, hook: x * 0.0)])
    assert _max_diff(base, edited) > 1e-3
    if "vision.blocks.0.attn.hook_rot_q" in names:  # the 2D rotation does act (position (0, 0) is the identity)
        _, c2 = model.run_with_cache(**inputs, names_filter=lambda n: n.startswith("vision.blocks.0.attn.hook_"))
        assert _max_diff(c2["vision.blocks.0.attn.hook_q"], c2["vision.blocks.0.attn.hook_rot_q"]) > 1e-3


HUB_CONFIGS = {  # abridged config.json of the hub checkpoints the Narrow Gate paper uses (no downloads)
    "mistral-community/pixtral-12b": {
        "architectures": ["LlavaForConditionalGeneration"], "ignore_index": -100, "image_seq_length": 1,
        "image_token_index": 10, "model_type": "llava", "projector_hidden_act": "gelu",
        "text_config": {"hidden_size": 5120, "head_dim": 128, "intermediate_size": 14336, "is_composition": True,
                        "max_position_embeddings": 1024000, "model_type": "mistral", "num_hidden_layers": 40,
                        "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 1000000000.0,
                        "sliding_window": None, "vocab_size": 131072},
        "vision_config": {"head_dim": 64, "hidden_act": "silu", "image_size": 1024, "is_composition": True,
                          "model_type": "pixtral", "patch_size": 16, "rope_theta": 10000.0, "tie_word_embeddings": False},
        "vision_feature_layer": -1, "vision_feature_select_strategy": "full"},
    "llava-hf/llava-v1.6-mistral-7b-hf": {
        "architectures": ["LlavaNextForConditionalGeneration"], "ignore_index": -100,
        "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
        "image_token_index": 32000, "model_type": "llava_next", "projector_hidden_act": "gelu",
        "text_config": {"intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
                        "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
                        "sliding_window": None, "vocab_size": 32064},
        "use_image_newline_parameter": True,
        "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096,
                          "model_type": "clip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 24,
                          "patch_size": 14, "projection_dim": 768, "vocab_size": 32000},
        "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "vocab_size": 32064},
    "llava-hf/llava-onevision-qwen2-7b-ov-hf": {
        "architectures": ["LlavaOnevisionForConditionalGeneration"], "ignore_index": -100,
        "image_grid_pinpoints": [[384, 384], [384, 768], [768, 384], [768, 768]], "image_token_index": 151646,
        "model_type": "llava_onevision", "projector_hidden_act": "gelu",
        "text_config": {"eos_token_id": 151645, "hidden_size": 3584, "intermediate_size": 18944,
                        "max_position_embeddings": 32768, "max_window_layers": 28, "model_type": "qwen2",
                        "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
                        "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 131072,
                        "tie_word_embeddings": False, "use_sliding_window": False, "vocab_size": 152128},
        "tie_word_embeddings": False, "use_image_newline_parameter": True, "video_token_index": 151647,
        "vision_aspect_ratio": "anyres_max_9",
        "vision_config": {"hidden_size": 1152, "image_size": 384, "intermediate_size": 4304,
                          "model_type": "siglip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 26,
                          "patch_size": 14, "vision_use_head": False},
        "vision_feature_layer": -1, "vision_feature_select_strategy": "full"},
}


@pytest.mark.parametrize("hub_id", sorted(HUB_CONFIGS))
def test_hub_shaped_configs_convert(hub_id):
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    raw = HUB_CONFIGS[hub_id]
    cfg = get_converter(raw["architectures"][0]).make_config(CONFIG_MAPPING[raw["model_type"]].from_dict(raw))
    assert cfg.n_layers == raw["text_config"].get("num_hidden_layers", 32)
    vc = raw["vision_config"]
    assert cfg.vision.grid_size == vc["image_size"] // vc["patch_size"]
