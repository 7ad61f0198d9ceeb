"""Aya Vision and Cohere2 Vision (the Cohere2 LM) against HF on tiny random checkpoints (tests/tiny_cohere.py).

Logits, LM residuals, both attention paths and greedy generation are tests/test_parity.py's (cases aya-vision,
cohere2-vision); golden hook names and every-hook-fires are tests/test_hooks.py's. Here: every SigLIP layer and the
projector against HF; that each Cohere2 part (interleaved RoPE, NoPE full layers, the window) changes the numbers, so
the parity cases would catch it missing; ``logit_scale`` against HF's Cohere2ForCausalLM and through W_U; the spans of
the processors' layouts; prepare_inputs; the refusals. Tolerances: fp32, 1e-4 absolute against HF (as test_parity).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util

import pytest
import torch

from converters import get_converter
from converters.base import UnsupportedConfigError
from hooked_vlm import HookedVLM
from hooked_vlm.pipelines.tiles import tiles_between_markers
from hooked_vlm.processors import ProcessorUnavailableError
from tests import tiny_cohere as tc
from tests.tiny import max_abs_diff as _max

ATOL = 1e-4
FAMILIES = {"aya": tc.aya, "cohere2_vision": tc.cohere2_vision}


@functools.lru_cache(maxsize=None)
def vision_refs(family: str):
    """HF's SigLIP hidden states, last_hidden_state (after post_layernorm) and projected features of the padded batch."""
    b = FAMILIES[family]()
    pixels = b.inputs["pixel_values"]
    with torch.no_grad():
        out = b.hf.model.vision_tower(pixels, output_hidden_states=True)
        features = b.hf.model.get_image_features(pixel_values=pixels).pooler_output
    return out.hidden_states, out.last_hidden_state, features


@pytest.mark.parametrize("explicit", [False, True])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_vision_layer_and_the_projector_match_hf(family, explicit):
    """hidden_states[l + 1] = vision layer l's output; Cohere2 Vision reads last_hidden_state (post_layernorm);
    the projector output = HF's pixel shuffle (+ LayerNorm for Aya) + SwiGLU. ``explicit``: vision hook_pattern hooked."""
    b = FAMILIES[family]()
    states, last, features = vision_refs(family)
    n = b.model.cfg.vision.tower.n_layers
    hooks = [(f"vision.blocks.{l}.attn.hook_pattern", lambda t, hook: t) for l in range(n)] if explicit else []
    keep = lambda name: name.startswith(("vision.hook_embed", "vision.ln_post", "projector.")) \
        or name.endswith("hook_resid_post")  # noqa: E731
    with torch.no_grad(), b.model.hooks(fwd_hooks=hooks):
        _, cache = b.model.run_with_cache(**b.inputs, names_filter=keep)
    assert len(states) == n + 1
    assert _max(states[0], cache["vision.hook_embed"]) <= ATOL
    for layer in range(n):
        assert _max(states[layer + 1], cache[f"vision.blocks.{layer}.hook_resid_post"]) <= ATOL, f"layer {layer}"
    if family == "cohere2_vision":
        assert _max(last, cache["vision.ln_post.hook_normalized"]) <= ATOL
        assert _max(last, states[-1]) > 10 * ATOL  # post_layernorm really changes what the projector reads
    assert cache["projector.hook_out"].shape == features.shape == (b.inputs["pixel_values"].shape[0], 4, 32)
    assert _max(features, cache["projector.hook_out"]) <= ATOL


def variant(b, **text_changes) -> HookedVLM:
    """The same weights in a model whose LM config differs by ``text_changes``."""
    cfg = dataclasses.replace(b.model.cfg, text=dataclasses.replace(b.model.cfg.text, **text_changes))
    model = HookedVLM(cfg, processor=b.model.processor).eval()
    model.load_state_dict(b.model.state_dict())
    return model


@pytest.mark.parametrize("change", ["rope_halves", "rope_in_full_layers", "no_window"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_cohere2_part_changes_the_logits(family, change):
    """The parity cases would catch each part missing: the same weights with Llama's half-split RoPE, with RoPE in the
    full (NoPE) layers too, or without the sliding window (8, shorter than every prompt) are far from HF."""
    b = FAMILIES[family]()
    text = b.model.cfg.text
    assert text.parallel_block and not text.norm_bias and text.rope_interleaved
    assert text.layer_rope_parameters["full_attention"] is None and "full_attention" in text.layer_types
    assert int(b.inputs["attention_mask"].sum(1).min()) > 2 * text.sliding_window
    rope = text.layer_rope_parameters["sliding_attention"]
    changes = {"rope_halves": dict(rope_interleaved=False),
               "rope_in_full_layers": dict(layer_rope_parameters={"sliding_attention": rope, "full_attention": rope}),
               "no_window": dict(sliding_window=10_000)}[change]  # a window longer than any prompt: none at all
    real = b.inputs["attention_mask"].bool()
    with torch.no_grad():
        ref = b.hf(**b.inputs).logits
        assert _max(ref[real], b.model(**b.inputs)[real]) <= ATOL
        changed = variant(b, **changes)(**b.inputs)
    assert _max(ref[real], changed[real]) > 10 * ATOL


@functools.lru_cache(maxsize=None)
def hf_causal_lm(family: str):
    """HF's Cohere2ForCausalLM holding the VLM's LM weights (it applies logit_scale)."""
    from transformers import Cohere2ForCausalLM

    b = FAMILIES[family]()
    lm = Cohere2ForCausalLM(b.hf.config.text_config).eval()
    state = {f"model.{k}": v for k, v in b.hf.model.language_model.state_dict().items()}
    state["lm_head.weight"] = b.hf.lm_head.weight
    lm.load_state_dict(state)
    return lm


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_logit_scale_matches_cohere2_for_causal_lm_and_w_u(family):
    """HF's VLM wrappers never apply text_config.logit_scale (0.25 here), so our conversion has 1.0; with the LM's own
    0.25 the same weights give HF Cohere2ForCausalLM's logits on a text prompt, and ln_final(resid) @ W_U == logits."""
    b = FAMILIES[family]()
    assert b.model.cfg.text.logit_scale == 1.0 and b.hf.config.text_config.logit_scale == tc.LOGIT_SCALE
    ids = torch.randint(4, 90, (2, 30), generator=torch.Generator().manual_seed(3))
    scaled = variant(b, logit_scale=tc.LOGIT_SCALE)
    with torch.no_grad():
        ref = hf_causal_lm(family)(input_ids=ids).logits
        logits, cache = scaled.run_with_cache(input_ids=ids, names_filter="ln_final.hook_normalized")
        plain = b.model(input_ids=ids)
    assert ref.abs().max() > 0.1  # logits of a size where 1e-4 is a real test
    assert _max(ref, logits) <= ATOL
    assert _max(ref / tc.LOGIT_SCALE, plain) <= ATOL / tc.LOGIT_SCALE
    assert _max(cache["ln_final.hook_normalized"] @ scaled.W_U, logits) <= 1e-5  # direct logit attribution sums up
    assert _max(scaled.tokens_to_residual_directions(7), scaled.W_U[:, 7]) == 0


def test_the_cohere_lm_case_exercises_what_it_claims():
    """Aya Vision 32B's LM kind (model_type "cohere"): RoPE in every layer (rot hooks everywhere), no window, per-head
    LayerNorm q/k norms without bias whose weights differ per head; the 8B kind has none of those."""
    v1, v2 = tc.aya("cohere").model, tc.aya().model
    t = v1.cfg.text
    assert (t.qk_norm, t.qk_norm_per_head, t.norm_bias, t.sliding_window, t.layer_types) == ("LN", True, False, None, None)
    assert all(hasattr(block.attn, "hook_rot_q") for block in v1.blocks)
    q_norm = v1.blocks[0].attn.q_norm
    assert q_norm.b is None and q_norm.w.shape == (t.n_heads, t.d_head)
    assert _max(q_norm.w[0], q_norm.w[1]) > 1e-3  # perturbed per head: a shared weight would not match HF
    assert v2.cfg.text.qk_norm is None and not hasattr(v2.blocks[1].attn, "hook_rot_q")


def test_aya_spans_follow_the_processor_layout():
    """Item 0: one image of 2 crops + thumbnail (TILE_1, TILE_2, TILE_GLOBAL); item 1: a 1-tile image (TILE_GLOBAL
    only) and an image of 3 crops + thumbnail. Tiles are grouped into images by <|START_OF_IMG|> / <|END_OF_IMG|>."""
    b = tc.aya()
    _, cache = b.model.run_with_cache(**b.inputs, names_filter="hook_embed")
    spans = cache.spans
    assert [lay.tiles for item in spans.layouts for lay in item] == [3, 1, 4]
    assert [spans.n_images(i) for i in range(2)] == [1, 2]
    ids = b.inputs["input_ids"]
    for role, token in (("boi", tc.BOI), ("eoi", tc.EOI), ("global_marker", tc.TILE_GLOBAL)):
        assert torch.equal(spans.mask(role), ids == token), role
    assert int(spans.mask("tile_marker").sum()) == 2 + 3 and not bool((spans.mask("text") & (ids == tc.TILE_GLOBAL)).any())
    assert len(spans.positions("image.1", 1)) == 4 * tc.TOKENS_PER_TILE
    assert int(spans.mask("thumbnail").sum()) == 2 * tc.TOKENS_PER_TILE  # the 1-tile image has no thumbnail
    assert model_tokens(b.model, b.inputs).count("<img 3:1,1>") == 1  # image 1 of item 1: tile 3 (its thumbnail), (1, 1)


def model_tokens(model, inputs) -> list[str]:
    return model.to_str_tokens(inputs, batch=1)


def test_cohere2_vision_spans_follow_the_processor_layout():
    """Item 0 (left-padded): one image of 3 tiles; item 1: images of 1 and 4 tiles; one <|IMG_LINE_BREAK|> per tile."""
    b = tc.cohere2_vision()
    _, cache = b.model.run_with_cache(**b.inputs, names_filter="hook_embed")
    spans = cache.spans
    assert [lay.tiles for item in spans.layouts for lay in item] == [3, 1, 4]
    assert torch.equal(spans.mask("tile_break"), b.inputs["input_ids"] == tc.LINE_BREAK)
    assert int(spans.mask("tile_break").sum()) == 3 + 1 + 4
    assert torch.equal(spans.mask("image"), b.inputs["input_ids"] == tc.PATCH)


def test_aya_prepare_inputs_is_the_real_processor():
    b = tc.aya()
    rows = ["USER: what is <image> this ASSISTANT:", "USER: <image> <image> red ASSISTANT:"]
    images = [tc.tiny.pil_image(1, 24).resize((8, 16)), tc.tiny.pil_image(2, 24), tc.tiny.pil_image(3, 24).resize((24, 8))]
    ours = b.model.prepare_inputs(images=images, text=rows)
    ref = tc.aya_processor()(images=images, text=rows, return_tensors="pt")
    assert torch.equal(ours["input_ids"], ref["input_ids"]) and torch.equal(ours["pixel_values"], ref["pixel_values"])
    with torch.no_grad():
        assert _max(b.hf(**ref).logits[ref["attention_mask"].bool()],
                    b.model(**ours)[ref["attention_mask"].bool()]) <= ATOL


def test_cohere2_vision_without_torchvision_says_what_is_missing():
    """Cohere2VisionImageProcessor imports torchvision: without it the processor cannot load, prepare_inputs names
    torchvision, and the marker ids still come from the tokenizer (spans work on inputs built elsewhere)."""
    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed: the processor loads")
    b = tc.cohere2_vision()
    assert (b.model.cfg.roles.boi_token_id, b.model.cfg.roles.eoi_token_id) == (tc.BOI, tc.EOI)
    with pytest.raises(ProcessorUnavailableError, match="torchvision") as err:
        b.model.prepare_inputs(images=[tc.tiny.pil_image(1, 24)], text=["<|START_OF_IMG|> what"])
    assert "pip install" in str(err.value) and "torch==" in str(err.value)


def test_tiles_between_markers_refuses_malformed_images():
    ok = torch.tensor([[1, tc.BOI, *[tc.PATCH] * 4, tc.LINE_BREAK, *[tc.PATCH] * 4, tc.LINE_BREAK, tc.EOI, 5]])
    assert tiles_between_markers(ok, tc.PATCH, tc.BOI, tc.EOI, 4, 2) == [2]
    with pytest.raises(ValueError, match="announce 2 tiles"):
        tiles_between_markers(ok, tc.PATCH, tc.BOI, tc.EOI, 4, 3)
    partial = torch.tensor([[tc.BOI, *[tc.PATCH] * 5, tc.EOI]])  # one token past a whole tile
    with pytest.raises(ValueError, match="whole number of tiles"):
        tiles_between_markers(partial, tc.PATCH, tc.BOI, tc.EOI, 4, 1)
    with pytest.raises(ValueError, match="never closed"):
        tiles_between_markers(ok[:, :-2], tc.PATCH, tc.BOI, tc.EOI, 4, 2)
    with pytest.raises(ValueError, match="outside"):
        tiles_between_markers(torch.tensor([[tc.PATCH] * 4]), tc.PATCH, tc.BOI, tc.EOI, 4, 1)


def _aya_config(text=None, vision=None, **top):
    from transformers import AyaVisionConfig

    kwargs = dict(text_config=text or tc.cohere2_text_config(), vision_config=vision or tc.siglip_vision_config(),
                  downsample_factor=2, image_token_index=tc.PATCH, alignment_intermediate_size=64)
    kwargs.update(top)
    return AyaVisionConfig(**kwargs)


@pytest.mark.parametrize("build, match", [
    (lambda: _aya_config(text=tc.cohere2_text_config(use_qk_norm=True)), "use_qk_norm"),
    (lambda: _aya_config(text=tc.cohere2_text_config(position_embedding_type="rope")), "position_embedding_type"),
    (lambda: _aya_config(text=tc.cohere2_text_config(use_embedding_sharing=False)), "use_embedding_sharing"),
    (lambda: _aya_config(text=tc.cohere2_text_config(rope_parameters={"rope_type": "longrope", "rope_theta": 1e4,
                                                                      "short_factor": [1.0] * 4, "long_factor": [1.0] * 4})),
     "rope_type"),
    (lambda: _aya_config(vision_feature_select_strategy="default"), "vision_feature_select_strategy"),
    (lambda: _aya_config(downsample_factor=3), "downsample_factor=3"),
    (lambda: _aya_config(vision=tc.siglip_vision_config(image_size=10)), "downsample_factor=2 must divide the 5x5"),
    (lambda: _aya_config(text=dict(tc.cohere2_text_config(), model_type="llama")), "model_type='llama'"),
    (lambda: _aya_config(image_token_index=tc.VOCAB), "outside the vocabulary"),
])
def test_aya_refuses_what_changes_the_numbers(build, match):
    with pytest.raises(UnsupportedConfigError, match=match):
        get_converter("AyaVisionForConditionalGeneration").make_config(build())


def test_aya_accepts_the_original_release_keys_at_hf_values():
    """Keys of the original Cohere2 release that HF never reads are accepted at the value HF hard-codes."""
    text = tc.cohere2_text_config(order_of_interleaved_layers="local_attn_first", position_embedding_type="rope_gptj",
                                  rotary_pct=1.0, use_gated_activation=True, use_parallel_block=True,
                                  use_qk_norm=False, use_embedding_sharing=True, model_max_length=8192,
                                  cache_implementation="hybrid")
    cfg = get_converter("AyaVisionForConditionalGeneration").make_config(_aya_config(text=text))
    assert cfg.text.parallel_block and cfg.text.rope_interleaved


def test_cohere2_vision_refuses_another_tower():
    from transformers import Cohere2VisionConfig

    hf = Cohere2VisionConfig(text_config=tc.cohere2_text_config(), image_token_id=tc.PATCH,
                             vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=48,
                                                num_hidden_layers=2, num_attention_heads=4, image_size=8, patch_size=2),
                             alignment_intermediate_size=64)
    with pytest.raises(UnsupportedConfigError, match="clip_vision_model"):
        get_converter("Cohere2VisionForConditionalGeneration").make_config(hf)


@pytest.mark.parametrize("family, text", [("aya_vision", "cohere2"), ("aya_vision", "cohere"), ("cohere2_vision", "cohere2")])
def test_structure_of_full_size_default_configs(family, text, tmp_path):
    """HF's default configs at full size (Aya: SigLIP 384/14 + Command R-sized Cohere2, or a Cohere LM with q/k norms
    as Aya Vision 32B's; Cohere2 Vision: SigLIP 512/16), on the meta device: every tensor of HF's model, under its
    in-memory names and the names save_pretrained writes, maps onto ours with the right shape, nothing left over."""
    import json

    from transformers import AyaVisionConfig, Cohere2VisionConfig, CohereConfig

    from tests.test_real_configs import _problems, structure

    if family == "aya_vision":  # HF's default vision config cannot run (384 / 14: a 27 x 27 grid its pixel shuffle
        # cannot fold; 14 heads do not divide 1152): SigLIP so400m's 16 heads and AyaVisionProcessor's img_size 364
        vision = AyaVisionConfig().vision_config.to_dict() | {"image_size": 364, "num_attention_heads": 16}
        hf = AyaVisionConfig(text_config=CohereConfig(use_qk_norm=True).to_dict() if text == "cohere" else None,
                             vision_config=vision, architectures=["AyaVisionForConditionalGeneration"])
    else:
        hf = Cohere2VisionConfig(architectures=["Cohere2VisionForConditionalGeneration"])
    path = tmp_path / f"{family}_{text}.json"
    path.write_text(json.dumps(hf.to_dict()))
    s = structure(path)
    assert _problems(s.in_memory) == {} and _problems(s.saved) == {}
    assert s.n_parameters == s.hf_parameters - s.not_converted and s.n_parameters > 5e9


def test_memory_estimate_sizes_every_lm_hook_of_parallel_nope_blocks():
    """``hooked-vlm inspect`` sizes the cache with a meta forward that hands one RoPE table to every block: the NoPE
    layers ignore it, and every LM hook point of the parallel blocks is sized."""
    from hooked_vlm.inspect import meta_model
    from hooked_vlm.memory import is_lm_hook, lm_activation_numels

    model = meta_model(tc.aya().model.cfg)
    seen, unsized = lm_activation_numels(model, 12)
    assert unsized == [] and set(seen) == {n for n in model.hook_dict if is_lm_hook(n)}
    assert seen["blocks.0.attn.hook_rot_q"][0] == 12 * 4 * 8 and "blocks.1.attn.hook_rot_q" not in seen


@pytest.mark.parametrize("case_id", ["aya-vision", "cohere2-vision"])
def test_generate_without_kv_cache_matches_hf(case_id):
    """Greedy tokens without our KV cache (every step reruns the prompt: 6 tokens, the start of test_parity's 10) equal
    HF's generate; the prompts are longer than the window, so the sliding layers' masks move with every new token."""
    from tests.test_parity import hf_generate, our_generate

    ref = hf_generate(case_id)
    no_cache = our_generate(case_id, n=6, use_kv_cache=False)
    assert no_cache.shape[1] == FAMILIES_BY_CASE[case_id]().inputs["input_ids"].shape[1] + 6
    assert torch.equal(no_cache, ref[:, : no_cache.shape[1]])


FAMILIES_BY_CASE = {"aya-vision": tc.aya, "cohere2-vision": tc.cohere2_vision}


@pytest.mark.parametrize("scale", [1.0, tc.LOGIT_SCALE])
def test_direct_logit_attribution_sums_to_the_logit(scale):
    """TL's recipe on the parallel blocks (attn_out and mlp_out of every layer, bias-free LayerNorms: no constant)
    with and without logit_scale: logit_attrs of decompose_resid sum to the logit; mlp_input names no norm there."""
    b = tc.aya()
    model = b.model if scale == 1.0 else variant(b, logit_scale=scale)
    inputs = {k: v[1:] for k, v in b.unpadded.items()}  # the second item (one 1-tile image): batch 1
    with torch.no_grad():
        logits, cache = model.run_with_cache(**inputs)
        t = int(logits[0, -1].argmax())
        attrs = cache.logit_attrs(cache.decompose_resid(pos_slice=-1), tokens=t, pos_slice=-1)
    assert attrs.shape[0] == 1 + 2 * model.cfg.n_layers  # embed + attn_out and mlp_out per layer
    assert abs(float(attrs.sum()) - float(logits[0, -1, t])) <= ATOL
    with pytest.raises(ValueError, match="parallel"):
        cache.apply_ln_to_stack(cache["blocks.0.hook_resid_pre"], layer=0, mlp_input=True)
