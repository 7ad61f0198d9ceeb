"""Native multimodal families (Chameleon, Emu3) and Janus: spans from real processors, VQ code hooks,
vocabulary roles, Janus' vision tower, bad input. Logit / residual / generate parity is in test_parity.py
(CASES "chameleon", "emu3", "janus")."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from converters import get_converter
from converters.base import UnsupportedConfigError
from hooked_vlm import HookedVLM
from tests import tiny_native as tn

ATOL = 1e-4


def _family(name: str):
    """(hf model, our model loaded with the offline processor, processor): the shared tiny build of the family."""
    b = {"chameleon": tn.chameleon, "emu3": tn.emu3, "janus": tn.janus}[name]()
    return b.hf, b.model, b.model.processor


def _runs(ids: torch.Tensor, token: int) -> list[torch.Tensor]:
    """Maximal runs of consecutive positions holding ``token`` in a 1-D id tensor."""
    pos = (ids == token).nonzero().flatten()
    if len(pos) == 0:
        return []
    cuts = (pos[1:] - pos[:-1] != 1).nonzero().flatten() + 1
    return list(torch.tensor_split(pos, cuts.tolist()))


def _cache_checked_against_hf(model, hf, inputs: dict):
    """Assert the logits at real (unpadded) positions equal HF's within ATOL on both attention paths (the default
    forward: SDPA; a full cache: hook_pattern hooked, explicit), return the full cache."""
    logits, cache = model.run_with_cache(**inputs)
    assert "blocks.0.attn.hook_pattern" in cache.keys()
    with torch.no_grad():
        ref = hf(**inputs).logits
        default = model(**inputs)
    real = inputs["attention_mask"].bool()
    assert (ref[real] - logits[real]).abs().max().item() <= ATOL
    assert (ref[real] - default[real]).abs().max().item() <= ATOL
    return cache


# ---------------------------------------------------------------- config flags
@pytest.mark.parametrize("name,native,image_output", [("chameleon", True, True), ("emu3", True, True), ("janus", False, True)])
def test_config_flags(name, native, image_output):
    _, model, _ = _family(name)
    assert model.cfg.native_multimodal is native
    assert model.cfg.image_output is image_output


# ---------------------------------------------------------------- spans from real processor outputs
def test_chameleon_spans_match_processor():
    hf, model, proc = _family("chameleon")
    out = proc(images=[tn.pil_image(12, 10), tn.pil_image(8, 8, 1), tn.pil_image(9, 16, 2)],
               text=["w <image> w w", "w <image> w <image>"], padding=True, return_tensors="pt")
    cache = _cache_checked_against_hf(model, hf, out)
    spans, ids = cache.spans, out["input_ids"]
    for b in range(ids.shape[0]):
        assert torch.equal(spans.positions("boi", b), (ids[b] == proc.image_start_token_id).nonzero().flatten())
        assert torch.equal(spans.positions("eoi", b), (ids[b] == proc.image_end_token_id).nonzero().flatten())
        runs = _runs(ids[b], proc.image_token_id)
        assert [len(r) for r in runs] == [proc.image_seq_length] * len(runs) == [16] * spans.n_images(b)
        for i, run in enumerate(runs):
            assert torch.equal(spans.positions(f"image.{i}", b), run)
            assert run[0] - 1 in spans.positions("boi", b) and run[-1] + 1 in spans.positions("eoi", b)
            grid = spans.grid[b, run]
            assert torch.equal(grid[:, 2] * 4 + grid[:, 3], torch.arange(16))  # (H / 2**(levels-1))**2, row-major
    assert spans.positions("last", 0).item() == int(out["attention_mask"][0].sum()) - 1


def test_emu3_spans_match_processor():
    hf, model, proc = _family("emu3")
    sizes = [(16, 24), (16, 16), (8, 16)]
    out = proc(images=[tn.pil_image(h, w, i) for i, (h, w) in enumerate(sizes)],
               text=["w <image> w w", "w <image> w <image>"], padding=True, return_tensors="pt")
    assert out["image_sizes"].tolist() == [list(s) for s in sizes]
    cache = _cache_checked_against_hf(model, hf, out)
    spans, ids, tok = cache.spans, out["input_ids"], proc.tokenizer
    eol, eof = tok.convert_tokens_to_ids("<|extra_200|>"), tok.convert_tokens_to_ids("<|extra_201|>")
    boi, eoi = tok.convert_tokens_to_ids("<|image start|>"), tok.convert_tokens_to_ids("<|image end|>")
    k = 0
    for b in range(ids.shape[0]):
        assert torch.equal(spans.positions("boi", b), (ids[b] == boi).nonzero().flatten())
        assert torch.equal(spans.positions("eoi", b), (ids[b] == eoi).nonzero().flatten())
        assert torch.equal(spans.positions("end_of_frame", b), (ids[b] == eof).nonzero().flatten())
        expected_breaks = []
        for i, run in enumerate(_runs(ids[b], proc.image_token_id)):
            rows, cols = sizes[k][0] // 8, sizes[k][1] // 8
            k += 1
            assert len(run) == rows * (cols + 1)  # what the processor produced
            by_row = run.view(rows, cols + 1)
            expected_breaks.append(by_row[:, -1])
            assert torch.equal(spans.positions(f"image.{i}", b), by_row[:, :-1].flatten())
            grid = spans.grid[b, by_row[:, :-1].flatten()]
            assert torch.equal(grid[:, 2] * cols + grid[:, 3], torch.arange(rows * cols))
            assert ids[b, run[-1] + 1] == eof and ids[b, run[-1] + 2] == eoi
        assert torch.equal(spans.positions("row_break", b), torch.cat(expected_breaks))
        # the row-break embeddings are the end-of-line token's, as in HF
        brk = spans.positions("row_break", b)
        assert torch.allclose(cache["hook_embed"][b, brk], model.W_E[eol].expand(len(brk), -1))
    assert k == len(sizes)
    strs = model.to_str_tokens(out, 0)
    assert strs[int(spans.positions("row_break", 0)[0])] == "<img newline>"
    assert strs[int(spans.positions("image", 0)[4])] == "<img 1,1>"  # 3 codes per row
    assert strs[int(spans.positions("end_of_frame", 0)[0])] == "<|extra_201|>"


def test_janus_spans_match_processor():
    hf, model, proc = _family("janus")
    out = proc(images=[tn.pil_image(12, 10), tn.pil_image(8, 8, 1), tn.pil_image(9, 16, 2)],
               text=["w <image_placeholder> w w", "w <image_placeholder> w <image_placeholder>"], padding=True,
               return_tensors="pt")
    cache = _cache_checked_against_hf(model, hf, out)
    spans, ids, tok = cache.spans, out["input_ids"], proc.tokenizer
    for b in range(ids.shape[0]):
        for role, text in (("boi", "<begin_of_image>"), ("eoi", "<end_of_image>")):
            want = (ids[b] == tok.convert_tokens_to_ids(text)).nonzero().flatten()
            assert len(want) > 0 and torch.equal(spans.positions(role, b), want)
        runs = _runs(ids[b], hf.config.image_token_id)
        assert [len(r) for r in runs] == [proc.num_image_tokens] * spans.n_images(b)
        assert torch.equal(spans.positions("image", b), torch.cat(runs))


# ---------------------------------------------------------------- VQ codes are hookable
@pytest.mark.parametrize("name", ["chameleon", "emu3"])
def test_replacing_codes_equals_running_on_the_other_image(name):
    _, model, proc = _family(name)
    text = "w <image> w w"
    size = (8, 8) if name == "chameleon" else (16, 24)
    a = proc(images=[tn.pil_image(*size, 1)], text=[text], return_tensors="pt")
    b = proc(images=[tn.pil_image(*size, 2)], text=[text], return_tensors="pt")
    assert torch.equal(a["input_ids"], b["input_ids"])
    logits_b, cache_b = model.run_with_cache(**b, names_filter="vision.hook_codes")
    codes_b = cache_b["vision.hook_codes"]
    logits_a, cache_a = model.run_with_cache(**a, names_filter="vision.hook_codes")
    assert not torch.equal(cache_a["vision.hook_codes"], codes_b)
    assert (logits_a - logits_b).abs().max().item() > 1e-3  # the images differ, so the hook has something to do
    assert torch.isin(codes_b, torch.as_tensor(model.cfg.vision.code_to_token + [model.cfg.vision.row_break_token_id or -1])).all()
    patched = model.run_with_hooks(**a, fwd_hooks=[("vision.hook_codes", lambda codes, hook: codes_b)])
    assert (patched - logits_b).abs().max().item() <= ATOL


def test_emu3_codes_layout_with_mixed_sizes():
    """Padded grid with -1 outside each image; every row ends with the end-of-line id."""
    _, model, proc = _family("emu3")
    out = proc(images=[tn.pil_image(16, 24), tn.pil_image(8, 16, 1)], text=["<image>", "<image>"], padding=True,
               return_tensors="pt")
    _, cache = model.run_with_cache(**out, names_filter="vision.hook_codes")
    codes = cache["vision.hook_codes"].view(2, 2, 4)  # padded grid 2 x 3 codes + 1 break column
    eol = model.cfg.vision.row_break_token_id
    assert (codes[0, :, 3] == eol).all() and (codes[0, :, :3] != eol).all()
    assert codes[1, 0, 2] == eol and (codes[1, 0, 3] == -1) and (codes[1, 1] == -1).all()


# ---------------------------------------------------------------- vocabulary roles
def test_vocab_roles_separate_image_codes_from_text():
    hf, model, proc = _family("chameleon")
    roles = model.vocab_roles
    img_ids = sorted(v for k, v in hf.config.vocabulary_map.items() if k.startswith("IMGIMG"))
    assert roles.image_code_ids.tolist() == img_ids
    assert sorted(roles.text_ids.tolist() + img_ids) == list(range(model.cfg.d_vocab))
    out = proc(images=[tn.pil_image(8, 8)], text=["w <image> w"], return_tensors="pt")
    logits = model(**out)
    text_part, image_part = roles.split(logits)
    assert (image_part == torch.finfo(logits.dtype).min).all()  # HF's suppression of image codes in text mode
    values, ids = roles.top_k(logits[0, -1], k=3, which="text")
    assert not roles.is_image_code(ids).any() and torch.equal(values, text_part[0, -1].topk(3).values)
    # the residual readout (no suppression) still reports image codes separately
    _, cache = model.run_with_cache(**out, names_filter="ln_final.hook_normalized")
    raw = cache["ln_final.hook_normalized"] @ model.W_U
    _, code_ids = roles.top_k(raw[0, -1], k=2, which="image")
    assert roles.is_image_code(code_ids).all()


def test_vocab_roles_empty_for_non_native():
    _, model, _ = _family("janus")
    assert model.vocab_roles.image_code_ids.numel() == 0
    assert model.vocab_roles.text_ids.numel() == model.cfg.d_vocab
    with pytest.raises(ValueError, match="no image-code vocabulary"):
        model.vocab_roles.top_k(torch.zeros(model.cfg.d_vocab), which="image")
    _, emu3, _ = _family("emu3")
    assert emu3.vocab_roles.image_code_ids.numel() == tn.N_CODES


# ---------------------------------------------------------------- Chameleon's per-head q/k LayerNorm
def test_chameleon_qk_norm_matches_hf_and_is_hooked():
    hf, model, proc = _family("chameleon")
    out = proc(images=[tn.pil_image(8, 8)], text=["w <image> w"], return_tensors="pt")
    _, cache = model.run_with_cache(**out)
    attn = hf.model.layers[1].self_attn
    x = cache["blocks.1.ln1.hook_normalized"]
    with torch.no_grad():
        ref_q = attn.q_norm(attn.q_proj(x).reshape(-1, attn.num_heads, attn.head_dim)).view_as(cache["blocks.1.attn.hook_q"])
    assert (cache["blocks.1.attn.q_norm.hook_normalized"] - ref_q).abs().max().item() <= 1e-5
    assert model.blocks[1].attn.q_norm.w.shape == (4, 8) and model.blocks[1].attn.k_norm.w.shape == (2, 8)
    zeroed = model.run_with_hooks(**out, fwd_hooks=[("blocks.0.attn.k_norm.hook_normalized", lambda t, hook: t * 0)])
    assert (zeroed - model(**out)).abs().max().item() > 1e-4


# ---------------------------------------------------------------- Janus
def test_janus_vision_tower_matches_hf():
    hf, model, proc = _family("janus")
    out = proc(images=[tn.pil_image(12, 10)], text=["<image_placeholder>"], return_tensors="pt")
    with torch.no_grad():
        ref = hf.model.vision_model(out["pixel_values"], output_hidden_states=True)
        aligned = hf.model.aligner(ref.last_hidden_state)
    _, cache = model.run_with_cache(**out)
    for layer in range(model.cfg.vision.tower.n_layers):
        assert (ref.hidden_states[layer + 1] - cache[f"vision.blocks.{layer}.hook_resid_post"]).abs().max().item() <= ATOL
    assert (ref.last_hidden_state - cache["vision.ln_post.hook_normalized"]).abs().max().item() <= ATOL
    assert (aligned - cache["projector.hook_out"]).abs().max().item() <= ATOL


def test_janus_generation_modules_are_ignored_with_reason():
    _, model, _ = _family("janus")
    keymap = get_converter("JanusForConditionalGeneration").make_keymap(model.cfg)
    for key in ("model.vqmodel.encoder.conv_in.weight", "model.generation_embeddings.weight",
                "model.generation_head.vision_head.bias", "model.generation_aligner.fc1.weight"):
        assert keymap.target(key) is None
        reasons = [r for p, r in keymap.ignored if re.fullmatch(p, key)]
        assert reasons and "not converted" in reasons[0]
    with pytest.raises(KeyError):
        keymap.target("model.some_new_module.weight")


# ---------------------------------------------------------------- key layouts
def test_emu3_in_memory_key_layout_loads_too():
    from safetensors.torch import save_file

    hf, model, _ = _family("emu3")
    folder = Path(tempfile.mkdtemp(prefix="emu3_inmem_"))
    hf.config.save_pretrained(folder)
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(folder / "model.safetensors"))
    assert any(k.startswith("model.text_model.") for k in hf.state_dict())
    other = HookedVLM.from_pretrained(str(folder), processor=None)
    for name, p in model.state_dict().items():
        assert torch.equal(p, other.state_dict()[name]), name
    shutil.rmtree(folder)


# ---------------------------------------------------------------- bad input
def test_chameleon_truncated_image_span_is_a_clear_error():
    _, model, proc = _family("chameleon")
    out = proc(images=[tn.pil_image(8, 8)], text=["w <image> w"], return_tensors="pt")
    first = int((out["input_ids"][0] == proc.image_token_id).nonzero()[0])
    cut = first + 10  # only 10 of the 16 image tokens survive, no <eoss> (e.g. max_length truncation)
    truncated = {"input_ids": out["input_ids"][:, :cut], "attention_mask": out["attention_mask"][:, :cut],
                 "pixel_values": out["pixel_values"]}
    with pytest.raises(ValueError, match=r"prompt holds 10 image tokens but the images give 16 image embeddings"):
        model(**truncated)


@pytest.mark.parametrize("name", ["chameleon", "emu3", "janus"])
def test_prompt_cut_right_after_the_image_is_a_clear_error(name):
    """All image tokens present but the end marker cut off (max_length truncation): no silent missing EOI."""
    _, model, proc = _family(name)
    image_token = proc.image_token
    size = (16, 16) if name == "emu3" else (8, 8)
    out = proc(images=[tn.pil_image(*size)], text=[f"w {image_token} w"], return_tensors="pt")
    ids = out["input_ids"][0]
    last = int((ids == model.cfg.roles.image_token_id).nonzero()[-1])
    cut = {k: (v[:, : last + 1] if k in ("input_ids", "attention_mask") else v) for k, v in out.items()}
    marker = {"chameleon": "eoi token <eoss>", "emu3": "end_of_frame token <|extra_201|>",
              "janus": "eoi token <end_of_image>"}[name]
    with pytest.raises(ValueError, match=re.escape(f"are not followed by the {marker}; the image span is truncated")):
        model(**cut)
    model(**out)  # the untruncated prompt is fine


@pytest.mark.parametrize("name,bad", [("chameleon", (7, 7)), ("emu3", (16, 20))])
def test_image_size_the_vq_cannot_tile_is_a_clear_error(name, bad):
    _, model, _ = _family(name)
    f = model.cfg.vision.downsample
    inputs = {"input_ids": torch.tensor([[1, model.cfg.roles.image_token_id]]), "pixel_values": torch.randn(1, 3, *bad)}
    if name == "emu3":
        inputs["pixel_values"] = torch.randn(1, 3, 16, 24)
        inputs["image_sizes"] = torch.tensor([bad])
    with pytest.raises(ValueError, match=rf"{bad[0]}x{bad[1]} pixels cannot be tiled .* multiples of {f}"):
        model(**inputs)


def test_emu3_without_image_sizes_is_a_clear_error():
    _, model, _ = _family("emu3")
    with pytest.raises(ValueError, match="needs image_sizes"):
        model(input_ids=torch.tensor([[1, 3]]), pixel_values=torch.randn(1, 3, 16, 16))


def test_chameleon_missing_code_tokens_are_refused():
    from transformers import ChameleonConfig

    vm = tn.chameleon_vocab()
    del vm["IMGIMGBCZ"]  # code 12
    with pytest.raises(UnsupportedConfigError, match=r"no token for VQ code\(s\) \[12\]"):
        get_converter("ChameleonForConditionalGeneration").make_config(
            ChameleonConfig(vocabulary_map=vm, vq_config=dict(num_embeddings=tn.N_CODES, base_channels=32)))
