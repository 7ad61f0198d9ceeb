"""PaliGemma 2 (PaliGemmaForConditionalGeneration, Gemma 2 LM) against HF on a tiny random checkpoint
(tests/tiny_paligemma.py).

Tolerances: fp32, 1e-4 absolute on logits / residuals / vision states (as tests/test_parity.py). The batch has left
padding, prefixes (16 image tokens + bos + words + "\\n") longer than the sliding window (6), suffixes of 0, 4 and 3
tokens; the attention and final soft-caps (2.0, 3.0) are small enough to bend the numbers (checked below). The configs
(refusals, key maps, published configs) are tests/test_paligemma_configs.py.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from hooked_vlm import HookedVLM
from hooked_vlm.analysis.knockout import knockout_hooks
from tests import tiny
from tests import tiny_paligemma as tp
from tests.tiny import max_abs_diff as _max, pattern_hooks as _pattern_hooks, real_positions as _real  # the shared comparison helpers


#: HF's own PaliGemma before transformers 5.23 is not the reference: checked on 5.20.0 (the make test-min venv), its
#: PaliGemmaForConditionalGeneration never applies final_logit_softcapping and Gemma 2 runs on SDPA, which drops the
#: attention-logit soft-cap. hooked_vlm computes what 5.23 computes; the comparisons with HF run in the main venv.
HF_PALIGEMMA_IS_RIGHT = pytest.mark.skipif(not tp.HF_IS_REFERENCE, reason=tp.HF_REFERENCE_REASON)

ATOL = 1e-4
GOLDEN = Path(__file__).parent / "golden"


@functools.lru_cache(maxsize=None)
def built():
    folder, hf, inputs = tp.paligemma_case()
    return folder, hf, HookedVLM.from_pretrained(str(folder)), inputs


@HF_PALIGEMMA_IS_RIGHT
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
    assert ref[real].abs().max().item() <= tp.FINAL_CAP  # final soft-cap


@HF_PALIGEMMA_IS_RIGHT
def test_soft_caps_bend_the_numbers_of_the_tiny_model():
    """Without either cap our logits leave HF's by far more than the tolerance: the parity tests test both caps."""
    _, hf, model, inputs = built()
    real = _real(inputs)
    t = model.cfg.text
    with torch.no_grad():
        ref = hf(**inputs).logits
        for name in ("attn_logit_softcap", "final_logit_softcap"):
            kept = getattr(t, name)
            setattr(t, name, None)
            try:
                assert _max(ref, model(**inputs), real) > 1e-2, name
            finally:
                setattr(t, name, kept)
        assert _max(ref, model(**inputs), real) <= ATOL


@HF_PALIGEMMA_IS_RIGHT
def test_right_padded_batch_matches_hf():
    _, hf, model, _ = built()
    inputs = tp.paligemma_batch(hf, [3, 8], [5, 2], [0, 4], seed=1, right=True)
    with torch.no_grad():
        assert _max(hf(**inputs).logits, model(**inputs), _real(inputs)) <= ATOL


@HF_PALIGEMMA_IS_RIGHT
def test_every_residual_matches_hf_hidden_states():
    _, hf, model, inputs = built()
    real = _real(inputs)
    with tiny.final_norm_input(hf) as last, torch.no_grad():
        ref = hf(**inputs, output_hidden_states=True).hidden_states
        _, cache = model.run_with_cache(**inputs)
    n = model.cfg.n_layers
    assert len(ref) == n + 1
    assert _max(ref[0], cache["hook_embed"], real) <= ATOL  # scaled token embeddings + unscaled image embeddings
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
    assert _max(ref.last_hidden_state, cache["projector.hook_in"]) <= ATOL
    assert _max(image_features, cache["projector.hook_out"]) <= ATOL


def test_rotary_positions_start_at_one_as_hf():
    """HF PaliGemma's positions are 1-indexed: our cos/sin tables equal HF's rotary_emb outputs."""
    _, hf, model, inputs = built()
    seen = {}
    h1 = hf.model.language_model.rotary_emb.register_forward_hook(lambda m, a, out: seen.__setitem__("hf", out))
    h2 = model.rotary.register_forward_hook(lambda m, a, out: seen.__setitem__("ours", out))
    try:
        with torch.no_grad():
            hf(**inputs)
            model(**inputs)
    finally:
        h1.remove()
        h2.remove()
    for ref, ours in zip(seen["hf"], seen["ours"]):
        ours = ours[:, :, 0]  # [batch, pos, d_head]
        assert _max(ref.expand_as(ours), ours) <= 1e-6


def _hf_masks(hf, inputs, prefix: bool):
    ids = inputs["input_ids"]
    masks = hf.create_masks_for_generate(
        config=hf.config, inputs_embeds=torch.zeros(*ids.shape, 1), attention_mask=inputs["attention_mask"],
        past_key_values=None, position_ids=torch.arange(ids.shape[1])[None] + 1,
        token_type_ids=inputs["token_type_ids"] if prefix else None)
    return {kind: (m == 0) if m.dtype != torch.bool else m for kind, m in masks.items()}  # eager: additive floats


@pytest.mark.parametrize("prefix", [True, False])
def test_hook_mask_of_every_layer_equals_hf_mask(prefix):
    """Our per-layer bool mask (blocks.{l}.attn.hook_mask) is HF's mask for that layer's kind, row for row."""
    _, hf, model, inputs = built()
    if not prefix:
        inputs = {k: v for k, v in inputs.items() if k != "token_type_ids"}
        ref = _hf_masks(hf, dict(inputs, token_type_ids=None), prefix)
    else:
        ref = _hf_masks(hf, inputs, prefix)
    _, cache = model.run_with_cache(**inputs, names_filter=lambda n: n.endswith("hook_mask"))
    real = _real(inputs)
    for layer, kind in enumerate(tp.LAYER_TYPES):
        ours = cache[f"blocks.{layer}.attn.hook_mask"][:, 0]  # [batch, q, k]
        assert torch.equal(ours[real], ref[kind][:, 0][real]), (layer, kind)
    # the policy is visible on a sliding layer: the first image token sees the prefix's last token (beyond the
    # window: the prefix block bypasses it, as in HF) ... while a suffix token sees only the window
    sliding = cache["blocks.0.attn.hook_mask"][1, 0]
    types = built()[3]["token_type_ids"][1]
    last_prefix, first_suffix = int((types == 0).nonzero().max()), int((types == 1).nonzero().min())
    assert bool(sliding[0, last_prefix]) == prefix
    assert not bool(sliding[first_suffix, first_suffix - tp.SLIDING_WINDOW])
    assert bool(sliding[first_suffix, first_suffix - tp.SLIDING_WINDOW + 1])
    assert not bool(sliding[first_suffix, first_suffix + 1])  # the suffix stays causal


@HF_PALIGEMMA_IS_RIGHT
def test_token_type_ids_switch_the_prefix_mask_as_in_hf():
    _, hf, model, inputs = built()
    causal_inputs = {k: v for k, v in inputs.items() if k != "token_type_ids"}
    real = _real(inputs)
    with torch.no_grad():
        ref = hf(**causal_inputs).logits
        ours = model(**causal_inputs)
        prefix = model(**inputs)
    assert _max(ref, ours, real) <= ATOL
    assert _max(prefix, ours, real) > 1e-3  # the two masks differ in the numbers: the parity tests test the policy
    one = {k: v for k, v in tp.paligemma_batch(hf, [7], [3], [0], seed=2).items() if k != "token_type_ids"}
    with torch.no_grad():  # no padding either: Gemma 2 runs eager attention, whose mask is causal (cf. PaliGemma 1)
        assert _max(hf(**one).logits, model(**one)) <= ATOL


def test_bad_token_type_ids_are_refused():
    _, _, model, inputs = built()
    with pytest.raises(ValueError, match="0 \\(prefix"):
        model(**dict(inputs, token_type_ids=inputs["token_type_ids"] * 2))
    with pytest.raises(ValueError, match="expected \\[batch, pos\\]"):
        model(**dict(inputs, token_type_ids=inputs["token_type_ids"][:1]))


@HF_PALIGEMMA_IS_RIGHT
@pytest.mark.parametrize("use_kv_cache", [True, False])
def test_greedy_generate_matches_hf(use_kv_cache):
    _, hf, model, inputs = built()
    with torch.no_grad():
        ref = hf.generate(**inputs, max_new_tokens=10, do_sample=False, min_new_tokens=10)
    ours = model.generate(**inputs, max_new_tokens=10, return_type="tokens", use_kv_cache=use_kv_cache,
                          stop_at_eos=False)
    assert ref.shape[1] == inputs["input_ids"].shape[1] + 10
    assert torch.equal(ref, ours)


def test_generated_tokens_are_suffix_spans():
    _, _, model, inputs = built()
    seen = []
    hook = (lambda t, hook: seen.append(hook.spans))
    model.generate(**inputs, max_new_tokens=3, return_type="tokens", stop_at_eos=False,
                   fwd_hooks=[("hook_embed", hook)])
    last = seen[-1]
    assert last.mask("suffix")[:, -2:].all() and not last.mask("prefix")[:, -2:].any()


def _processor_inputs(model):
    prompts = ["what is this ?", "describe the image"]
    images = [tiny.pil_image(0, 24), tiny.pil_image(1, 20)]
    return model.prepare_inputs(images=images, text=[f"<image>{p}" for p in prompts], suffix=["a red circle", "blue"],
                                padding_side="left")


@HF_PALIGEMMA_IS_RIGHT
def test_spans_from_the_real_processor():
    _, hf, model, _ = built()
    inputs = _processor_inputs(model)
    assert set(inputs) == {"input_ids", "attention_mask", "pixel_values", "token_type_ids"}  # HF's labels dropped
    with torch.no_grad():
        ref = hf(**inputs).logits
    logits, cache = model.run_with_cache(**inputs, names_filter="hook_embed")
    assert _max(ref, logits, _real(inputs)) <= ATOL
    spans, ids = cache.spans, inputs["input_ids"]
    for b, n_suffix in ((0, 4), (1, 2)):  # suffix words + <eos>
        image = spans.positions("image", b)
        assert len(image) == tp.N_IMAGE_TOKENS and ids[b, image].eq(tp.IMAGE_TOKEN).all()
        prefix, suffix = spans.positions("prefix", b), spans.positions("suffix", b)
        assert prefix[: tp.N_IMAGE_TOKENS].tolist() == image.tolist()  # the prefix starts with the image
        assert ids[b, prefix[tp.N_IMAGE_TOKENS]] == tp.BOS and ids[b, prefix[-1]] == tp.NEWLINE
        assert len(suffix) == n_suffix and ids[b, suffix[-1]] == tp.EOS and int(suffix[0]) == int(prefix[-1]) + 1
        grid = spans.grid[b, image]
        assert grid[:, 2].tolist() == [r for r in range(4) for _ in range(4)]  # 4x4 patch grid, row-major
        assert grid[:, 3].tolist() == list(range(4)) * 4
    assert spans.positions("last", 0).tolist() == [ids.shape[1] - 1]


def test_hook_names_are_golden():
    _, _, model, _ = built()
    assert sorted(model.hook_dict) == (GOLDEN / "hook_names_paligemma.txt").read_text().split()


def test_every_hook_fires():
    _, _, model, inputs = built()
    fired = set()
    model.run_with_hooks(**inputs, fwd_hooks=[(lambda n: True, lambda t, hook: fired.add(hook.name))])
    assert fired == set(model.hook_dict)


def _hf_logits_with_masks(hf, inputs, masks):
    """HF's own forward, split where PaliGemmaModel builds its mask, given a prepared mask mapping."""
    lm = hf.model.language_model
    ids = inputs["input_ids"]
    embeds = lm.embed_tokens(ids)
    feats = hf.model.get_image_features(inputs["pixel_values"]).pooler_output
    embeds = embeds.masked_scatter((ids == tp.IMAGE_TOKEN)[..., None], feats.reshape(-1, feats.shape[-1]))
    hidden = lm(inputs_embeds=embeds, attention_mask=masks, position_ids=torch.arange(ids.shape[1])[None] + 1)
    logits = hf.lm_head(hidden.last_hidden_state)
    return torch.tanh(logits / tp.FINAL_CAP) * tp.FINAL_CAP


@HF_PALIGEMMA_IS_RIGHT
def test_mask_knockout_equals_hf_with_the_edges_removed_by_hand():
    """knockout mode "mask" image -> suffix (an edit of hook_mask) == HF given its own prefix-LM masks with the
    image -> suffix entries set to "masked" by hand."""
    _, hf, model, inputs = built()
    masks = _hf_masks(hf, inputs, prefix=True)
    real = _real(inputs)
    is_image = (inputs["input_ids"] == tp.IMAGE_TOKEN) & real
    is_suffix = (inputs["token_type_ids"] == 1) & real
    blocked = is_suffix[:, None, :, None] & is_image[:, None, None, :]
    edited = {kind: torch.where(m & ~blocked, 0.0, torch.finfo(torch.float32).min) for kind, m in masks.items()}
    with torch.no_grad():
        full = _hf_logits_with_masks(hf, inputs, {k: torch.where(m, 0.0, torch.finfo(torch.float32).min)
                                                  for k, m in masks.items()})
        assert _max(full, hf(**inputs).logits, real) <= ATOL  # the split forward is HF's forward
        ref = _hf_logits_with_masks(hf, inputs, edited)
        base = model(**inputs)
        ours = model.run_with_hooks(**inputs, fwd_hooks=knockout_hooks(model, src="image", dst="suffix", mode="mask"))
    assert _max(ref, ours, real) <= ATOL
    assert _max(base, ours, is_suffix) > 1e-3  # the knockout changed the suffix


# ---------------------------------------------------------------- PaliGemma 1 (Gemma LM, pre-norm, HF runs SDPA)
@functools.lru_cache(maxsize=None)
def built1():
    folder, hf, inputs = tp.paligemma1_case()
    return folder, hf, HookedVLM.from_pretrained(str(folder)), inputs


def test_paligemma1_logits_and_residuals_match_hf():
    _, hf, model, inputs = built1()
    assert hf.config.text_config._attn_implementation == "sdpa" and model.cfg.text.norm_placement == "pre"
    real = _real(inputs)
    with tiny.final_norm_input(hf) as last, torch.no_grad():
        out = hf(**inputs, output_hidden_states=True)
        logits, cache = model.run_with_cache(**inputs)
        explicit = model.run_with_hooks(**inputs, fwd_hooks=_pattern_hooks(model))
    assert _max(out.logits, logits, real) <= ATOL and _max(out.logits, explicit, real) <= ATOL
    n = model.cfg.n_layers
    for layer in range(n):  # the last block against HF's final-norm input
        hf_state = out.hidden_states[layer + 1] if layer < n - 1 else last["x"]
        assert _max(hf_state, cache[f"blocks.{layer}.hook_resid_post"], real) <= ATOL, layer
    no_types = {k: v for k, v in inputs.items() if k != "token_type_ids"}  # padded: HF materialises a causal mask
    with torch.no_grad():
        assert _max(hf(**no_types).logits, model(**no_types), real) <= ATOL


@pytest.mark.parametrize("use_kv_cache", [True, False])
def test_paligemma1_greedy_generate_matches_hf(use_kv_cache):
    _, hf, model, inputs = built1()
    with torch.no_grad():
        ref = hf.generate(**inputs, max_new_tokens=10, do_sample=False, min_new_tokens=10)
    ours = model.generate(**inputs, max_new_tokens=10, return_type="tokens", use_kv_cache=use_kv_cache,
                          stop_at_eos=False)
    assert torch.equal(ref, ours)


def test_paligemma1_hf_sdpa_quirk_without_token_type_ids_is_documented():
    """HF quirk (docs/families.md): PaliGemmaConfig sets use_bidirectional_attention=True, so Gemma's attention has
    is_causal=False; with no token_type_ids and no padding HF skips the mask and SDPA then attends BIDIRECTIONALLY
    (HF's eager path: causally). We stay causal without token_type_ids (HF eager's numbers); HF SDPA's numbers are
    ours with every position marked prefix."""
    import copy

    _, hf, model, _ = built1()
    one = tp.paligemma_batch(hf, [7], [3], [0], seed=2)
    no_types = {k: v for k, v in one.items() if k != "token_type_ids"}
    eager = copy.deepcopy(hf)
    eager.config.text_config._attn_implementation = "eager"
    with torch.no_grad():
        sdpa_ref, eager_ref = hf(**no_types).logits, eager(**no_types).logits
        ours = model(**no_types)
        all_prefix = model(**no_types, token_type_ids=torch.zeros_like(one["input_ids"]))
    assert _max(eager_ref, ours) <= ATOL
    assert _max(sdpa_ref, all_prefix) <= ATOL
    assert _max(sdpa_ref, ours) > 1e-2


@pytest.mark.parametrize("use_kv_cache", [True, False])
def test_generate_positions_start_at_one_as_hf(use_kv_cache):
    """During generate our cos/sin tables equal HF's at every real position of every step (HF's generate adds 1 to
    the cumsum positions; RoPE is relative, so the tokens alone would not show a missing offset)."""
    _, hf, model, inputs = built()
    seen = {"hf": [], "ours": []}
    h1 = hf.model.language_model.rotary_emb.register_forward_hook(lambda m, a, out: seen["hf"].append(out[0]))
    h2 = model.rotary.register_forward_hook(lambda m, a, out: seen["ours"].append(out[0][:, :, 0]))
    try:
        with torch.no_grad():
            hf.generate(**inputs, max_new_tokens=3, do_sample=False, min_new_tokens=3, use_cache=use_kv_cache)
        model.generate(**inputs, max_new_tokens=3, return_type="tokens", use_kv_cache=use_kv_cache, stop_at_eos=False)
    finally:
        h1.remove()
        h2.remove()
    assert len(seen["hf"]) == len(seen["ours"]) == 3
    mask = inputs["attention_mask"].bool()
    for step, (ref, ours) in enumerate(zip(seen["hf"], seen["ours"])):
        n = ours.shape[1]
        real = torch.cat([mask, torch.ones(mask.shape[0], step, dtype=torch.bool)], 1)[:, -n:]
        assert _max(ref.expand_as(ours), ours, real) <= 1e-6, step
