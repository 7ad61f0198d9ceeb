"""Llama 3.2 Vision (Mllama) beyond the shared parity tests: every vision layer (local and global) and the projector
against HF, the cross-attention keys computed once and cached, generation without a KV cache, the mask that changes
mid-row, HF's full-text-row rule, text-only forwards, the tanh gates, bad inputs."""

from __future__ import annotations

import functools

import pytest
import torch

from hooked_vlm import KVCache
from tests import tiny_mllama as tml
from tests.test_parity import ATOL, PATH_ATOL, hf_generate, hf_run, ours_run

CASE = "mllama"


def _b():
    return tml.mllama()


def _max(a, b) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@functools.lru_cache(maxsize=None)
def _hf_vision_layers():
    """HF's vision layer outputs (local, global: [image, tile * 24, d]), its tower output and projected keys."""
    b = _b()
    vm = b.hf.model.vision_model
    seen = {"local": [], "global": []}
    handles = [layer.register_forward_hook(lambda m, i, o, k=k: seen[k].append(o))
               for k, layers in (("local", vm.transformer.layers), ("global", vm.global_transformer.layers))
               for layer in layers]
    inp = b.inputs
    try:
        with torch.no_grad():
            out = vm(pixel_values=inp["pixel_values"], aspect_ratio_ids=inp["aspect_ratio_ids"],
                     aspect_ratio_mask=inp["aspect_ratio_mask"]).last_hidden_state
            keys = b.hf.model.multi_modal_projector(out)
    finally:
        for h in handles:
            h.remove()
    return seen, out, keys


@pytest.mark.parametrize("path", ["fast", "explicit"])
def test_every_vision_layer_and_the_keys_match_hf(path):
    model = _b().model
    seen, out, keys = _hf_vision_layers()
    _, cache, _ = ours_run(CASE, "padded", path)
    names = cache.keys()
    assert "vision.blocks.0.hook_resid_post" in names and "vision.global_blocks.0.hook_resid_post" in names
    for l in range(model.cfg.vision.tower.n_layers):
        assert _max(seen["local"][l], cache[f"vision.blocks.{l}.hook_resid_post"]) <= ATOL, l
    for l in range(model.cfg.vision.extra["global_layers"]):
        assert _max(seen["global"][l], cache[f"vision.global_blocks.{l}.hook_resid_post"]) <= ATOL, l
    b, n_img, n_tiles, n_pos = out.shape[:4]
    with torch.no_grad():
        ours_out = model.run_with_cache(**_b().inputs, names_filter=["vision.hook_out", "hook_image_embeds"])[1]
    assert _max(out.reshape(b * n_img, n_tiles, n_pos, -1), ours_out["vision.hook_out"]) <= ATOL
    assert _max(keys.reshape(b, -1, keys.shape[-1]), ours_out["hook_image_embeds"]) <= ATOL


def test_the_vision_mask_is_hfs_padding_pairs():
    """A padding query sees only real keys, a real query sees every key (HF's aspect-ratio mask)."""
    b = _b()
    seen = {}
    b.model.run_with_hooks(**b.inputs, fwd_hooks=[("vision.blocks.0.attn.hook_mask",
                                                    lambda m, hook: seen.setdefault("m", m.clone()))])
    m = seen["m"][:, 0]  # [image, q, k]; image 0 of row 0: 2 real tiles; image 1 of row 0: 1 real tile
    per_tile = 24
    assert bool(m[0, :17].all())  # a real position sees all 48 keys, padding included
    assert bool(m[0, 17:24, :17].all()) and not bool(m[0, 17:24, 17:24].any())  # padded positions: real keys only
    assert not bool(m[1, per_tile, per_tile:].any())  # image 1's second tile is padding: it sees only tile 0's real
    assert bool(m[1, per_tile, :17].all())


def test_cross_attention_mask_changes_mid_row_and_the_full_row_rule_acts(monkeypatch):
    """Row 0 holds two images: its first words see no image, then image 0 (2 tiles), then image 1 (1 tile). HF's rule
    for rows that see no image (attend to every key, MLP zeroed) is what parity relies on: turning it off moves the
    output of the first cross-attention layer (block 1) at exactly those rows (later layers mix rows)."""
    b = _b()
    cam = b.inputs["cross_attention_mask"][0]  # [pos, image, tile]
    ids = b.inputs["input_ids"][0].tolist()
    first, second = [p for p, t in enumerate(ids) if t == tml.IMAGE_TOKEN]
    assert not bool(cam[:first].any())
    assert cam[first:second].tolist() == [[[1, 1], [0, 0]]] * (second - first)
    assert cam[second:].tolist() == [[[0, 0], [1, 0]]] * (len(ids) - second)
    ref = hf_run(CASE).hidden_states[2]  # after block 1
    for block in b.model.blocks:
        if block.mixer_kind == "cross_attention":
            monkeypatch.setattr(block.cross_attn, "empty_rows_attend_all", False)
    with torch.no_grad():
        other = b.model(**b.inputs, stop_at_layer=2)
    real = b.inputs["attention_mask"].bool()
    sees = b.inputs["cross_attention_mask"].flatten(2).any(-1)  # [batch, pos]
    assert _max(ref[real & sees], other[real & sees]) <= ATOL
    assert _max(ref[real & ~sees], other[real & ~sees]) > 10 * ATOL  # measured 3.0e-3 (residuals of scale 0.05)


def test_hook_mask_shows_the_rule_and_gates_are_tanh():
    b = _b()
    _, cache = b.model.run_with_cache(**b.inputs)
    mask = cache["blocks.1.cross_attn.hook_mask"]  # [batch, 1, q, key]
    ids = b.inputs["input_ids"][0].tolist()
    first = ids.index(tml.IMAGE_TOKEN)
    assert bool(mask[0, 0, :first].all())  # rows that see no image: every key (HF's rule)
    assert int(mask[0, 0, first].sum()) == 2 * 17  # image 0's two tiles x 17 positions
    gate = b.hf.model.language_model.layers[1].cross_attn_attn_gate
    assert _max(cache["blocks.1.hook_attn_gate"], gate.tanh()) == 0.0
    assert float(gate.detach().abs()) > 0.1  # the gates are open in the tiny model (HF inits them at 0)


def test_cross_keys_are_computed_once_and_cached_during_generation():
    """With the KV cache the vision tower and the cross-attention k / v run once (on the prompt); the tokens equal
    HF's generate, which caches the cross keys the same way."""
    b = _b()
    calls = {"vision": 0, "k": 0}

    def count(key):
        def hook(x, hook):
            calls[key] += 1
        return hook

    with b.model.hooks(fwd_hooks=[("vision.hook_out", count("vision")), ("blocks.1.cross_attn.hook_k", count("k"))]):
        ours = b.model.generate(**b.inputs, max_new_tokens=10, return_type="tokens")
    assert torch.equal(ours, hf_generate(CASE))
    assert calls == {"vision": 1, "k": 1}


def test_generate_without_kv_cache_matches_hf():
    b = _b()
    ref = hf_generate(CASE)
    ours = b.model.generate(**b.inputs, max_new_tokens=6, return_type="tokens", use_kv_cache=False)
    assert torch.equal(ours, ref[:, : ours.shape[1]])


def test_a_cache_refuses_new_images_and_a_text_only_forward_skips_cross_layers():
    b = _b()
    cache = KVCache(b.model.cfg)
    with torch.no_grad():
        b.model(**b.inputs, kv_cache=cache)
        with pytest.raises(ValueError, match="already holds the keys"):
            b.model(**b.inputs, kv_cache=cache)
    words = b.unpadded["input_ids"][:, 2:]  # no image placeholder, no pixels: HF skips the cross-attention layers
    with torch.no_grad():
        ref = b.hf(input_ids=words).logits
        ours = b.model(words)
    assert _max(ref, ours) <= ATOL


def test_bad_inputs_say_what_to_do():
    b = _b()
    inp = dict(b.inputs)
    with pytest.raises(ValueError, match="aspect_ratio_ids must be given"):
        b.model(**{k: v for k, v in inp.items() if k != "aspect_ratio_ids"})
    with pytest.raises(ValueError, match=r"\[batch, images, tiles"):
        b.model(**dict(inp, pixel_values=inp["pixel_values"][:, 0]))
    with pytest.raises(ValueError, match="cross_attention_mask has shape"):
        b.model(**dict(inp, cross_attention_mask=inp["cross_attention_mask"][:, :, :, :1].repeat(1, 2, 1, 1)))


def test_fast_and_explicit_cross_attention_agree_on_an_edited_mask():
    """A knockout edit through hook_mask works on both paths (SDPA with the edited mask, explicit softmax)."""
    b = _b()

    def knock(m, hook):
        m = m.clone()
        m[:, :, :, :17] = False  # every row loses image 0's first tile
        return m

    hooks = [(f"blocks.{l}.cross_attn.hook_mask", knock) for l in (1, 3)]
    with torch.no_grad():
        fast = b.model.run_with_hooks(**b.inputs, fwd_hooks=hooks)
        slow = b.model.run_with_hooks(**b.inputs, fwd_hooks=hooks + [("blocks.1.cross_attn.hook_pattern", lambda p, hook: p),
                                                                   ("blocks.3.cross_attn.hook_pattern", lambda p, hook: p)])
    assert _max(fast, slow) <= PATH_ATOL


def test_a_decode_step_reuses_the_cached_keys_and_the_last_mask_row():
    """Prompt with a KV cache, then one token with no image inputs at all: the step's logits equal HF's forward on
    the whole sequence (whose mask row for the new token repeats the last one, as HF's generate writes it)."""
    b = _b()
    inp = b.unpadded
    new = torch.tensor([[7], [9]])
    cache = KVCache(b.model.cfg)
    with torch.no_grad():
        b.model(**inp, kv_cache=cache)
        step = b.model(new, kv_cache=cache)[:, -1]
        cam = inp["cross_attention_mask"]
        full = dict(inp, input_ids=torch.cat([inp["input_ids"], new], 1),
                    attention_mask=torch.ones(2, cam.shape[1] + 1, dtype=torch.long),
                    cross_attention_mask=torch.cat([cam, cam[:, -1:]], 1))
        ref = b.hf(**full).logits[:, -1]
    assert _max(ref, step) <= ATOL
    assert cache.layers[1].k is not None and cache.layers[1].k.shape[1] == 34  # 1 image slot x 2 tiles x 17


def test_inspect_sizes_the_cross_attention_layers_and_the_tiled_tower():
    """inspect's run_with_cache estimate: every LM hook sized (cross layers with one image's keys: 2 tiles x 17), the
    vision side from one image of max_num_tiles tiles; the numbers are the shapes a real run_with_cache gives."""
    from hooked_vlm.inspect import meta_model
    from hooked_vlm.memory import lm_activation_numels, vision_activation_numels

    b = _b()
    meta = meta_model(b.model.cfg)
    lm, unsized = lm_activation_numels(meta, 10)
    assert unsized == []
    assert lm["blocks.1.cross_attn.hook_pattern"] == (1 * 4 * 10 * 34, False)
    assert lm["blocks.1.cross_attn.hook_mask"] == (10 * 34, True)
    vision, note = vision_activation_numels(meta)
    assert vision is not None, note
    assert vision["hook_image_embeds"] == (34 * 32, False) and "2 tiles" in note
    inp = {k: v[:1, :1] if k in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask") else v[:1]
           for k, v in b.unpadded.items()}
    inp["cross_attention_mask"] = inp["cross_attention_mask"][:, :, :1]
    _, cache = b.model.run_with_cache(**inp, names_filter=["vision.global_blocks.0.attn.hook_pattern", "hook_image_embeds"])
    assert vision["vision.global_blocks.0.attn.hook_pattern"][0] == cache["vision.global_blocks.0.attn.hook_pattern"].numel()
