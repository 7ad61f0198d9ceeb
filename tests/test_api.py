"""TransformerLens-style API: caches, TL cache helpers, weight views, spans, tokens."""

from __future__ import annotations

import pytest
import torch

from tests import tiny


def base():
    """(model, hf, inputs): the shared tiny GQA LLaVA (parity case llava-llama-gqa; saved with its processor)."""
    b = tiny.llava(text=tiny.llama_text_config(num_key_value_heads=2), images=(1, 2), pads=(3, 0))
    return b.model, b.hf, b.inputs


def test_weight_views_share_storage_and_compute_q():
    model, _, inputs = base()
    attn = model.blocks[1].attn
    assert attn.W_Q.shape == (4, 32, 8) and attn.W_K.shape == (2, 32, 8) and attn.W_O.shape == (4, 8, 32)
    assert attn.W_Q.data_ptr() == attn.q_proj.weight.data_ptr()  # a view, not a copy
    assert model.W_U.data_ptr() == model.unembed.weight.data_ptr() and model.W_U.shape == (32, tiny.VOCAB)
    assert model.W_E.shape == (tiny.VOCAB, 32)
    assert model.W_in.shape == (3, 32, 64) and model.W_out.shape == (3, 64, 32) and model.W_Q.shape == (3, 4, 32, 8)
    _, cache = model.run_with_cache(**inputs, names_filter=lambda n: n.startswith("blocks.1."))
    x = cache["blocks.1.ln1.hook_normalized"]
    q = torch.einsum("bpd,hde->bphe", x, attn.W_Q)
    assert (q - cache["blocks.1.attn.hook_q"]).abs().max().item() <= 1e-5
    z = cache["blocks.1.attn.hook_z"]
    out = torch.einsum("bphe,hed->bpd", z, attn.W_O)
    assert (out - cache["blocks.1.hook_attn_out"]).abs().max().item() <= 1e-5


def test_tl_accumulated_resid_and_decompose():
    model, _, inputs = base()
    logits, cache = model.run_with_cache(**inputs)
    real = inputs["attention_mask"].bool()
    stack = cache.accumulated_resid(apply_ln=False)  # [layer+1, batch, pos, d]
    assert stack.shape[0] == model.cfg.n_layers + 1
    assert torch.allclose(stack[-1], cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"])
    # apply_ln_to_stack divides by the cached ln scale and applies ln_final's weight (hooked_vlm.tl_cache): the raw
    # W_U then gives the logits, as TL's weight-free stack times its folded W_U does
    normed = cache.apply_ln_to_stack(stack[-1:], layer=-1)[0]
    lens_logits = normed @ model.W_U
    assert (lens_logits[real] - logits[real]).abs().max().item() <= 1e-4
    # recompute_ln=True runs our ln_final (weight included): the classic logit lens directly
    lens2 = cache.apply_ln_to_stack(stack, layer=-1, recompute_ln=True) @ model.W_U
    assert (lens2[-1][real] - logits[real]).abs().max().item() <= 1e-4
    parts, labels = cache.decompose_resid(return_labels=True)
    assert labels[0] == "embed"
    assert (parts.sum(0) - stack[-1]).abs().max().item() <= 1e-4


def test_stop_at_layer_remove_batch_dim_and_loss():
    model, _, inputs = base()
    _, cache = model.run_with_cache(**inputs, names_filter="blocks.2.hook_resid_pre")
    resid = model(**inputs, stop_at_layer=2)
    assert torch.equal(resid, cache["blocks.2.hook_resid_pre"])
    one = {k: v[1:] for k, v in inputs.items() if k != "pixel_values"}
    one["pixel_values"] = inputs["pixel_values"][1:]
    _, c1 = model.run_with_cache(**one, remove_batch_dim=True, names_filter=lambda n: n == "blocks.0.hook_resid_post")
    assert c1["blocks.0.hook_resid_post"].ndim == 2
    logits, loss = model(**inputs, return_type="both")
    text = model.run_state.spans.mask("text")[:, 1:]
    manual = torch.nn.functional.cross_entropy(logits[:, :-1][text], inputs["input_ids"][:, 1:][text])
    assert abs(loss.item() - manual.item()) <= 1e-5


def test_spans_of_a_padded_two_image_batch():
    model, hf, inputs = base()
    _, cache = model.run_with_cache(**inputs, names_filter="hook_embed")
    spans = cache.spans
    n = tiny.image_tokens_per_image(hf)
    ids = inputs["input_ids"]
    assert spans.mask("image").sum(1).tolist() == [n, 2 * n]
    assert torch.equal(spans.mask("image"), ids == tiny.IMAGE_TOKEN)
    assert spans.positions("image.1", 1).tolist() == (ids[1] == tiny.IMAGE_TOKEN).nonzero().flatten()[n:].tolist()
    assert "image.1" in spans and spans.mask("image.1")[0].sum() == 0
    assert spans["last"][0].tolist() == [ids.shape[1] - 1]
    assert spans.mask("pad").sum(1).tolist() == (inputs["attention_mask"] == 0).sum(1).tolist()
    text = spans.mask("text")
    assert not (text & spans.mask("image")).any() and not (text & spans.mask("pad")).any()
    # every image token has its (row, col); the grid round-trips
    grid = spans.to_grid(torch.arange(ids.shape[1]).float(), image=1, batch=1)
    assert grid.shape == (4, 4) and grid[0, 0].item() == spans.positions("image.1", 1)[0].item()
    assert grid[3, 3].item() == spans.positions("image.1", 1)[-1].item()
    x = cache["hook_embed"][0, cache.spans.positions("image", 0)]
    assert x.shape == (n, 32)


def test_to_str_tokens_and_to_tokens():
    model, _, _ = base()
    toks = model.to_tokens("USER: what is this ?")
    assert toks.tolist()[0][0] == tiny.BOS
    assert model.to_str_tokens(toks) == ["<s>", "USER:", "what", "is", "this", "?"]
    assert model.to_single_token("red") == model.tokenizer.convert_tokens_to_ids("red")
    with pytest.raises(ValueError, match="not one"):
        model.to_single_token("red green")


def test_sampling_is_seeded_and_hooks_stay_active_while_generating():
    model, _, inputs = base()
    a = model.generate(**inputs, max_new_tokens=5, do_sample=True, top_k=20, top_p=0.9, temperature=0.8, seed=3, return_type="tokens")
    b = model.generate(**inputs, max_new_tokens=5, do_sample=True, top_k=20, top_p=0.9, temperature=0.8, seed=3, return_type="tokens")
    assert torch.equal(a, b)
    calls = []
    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda t, hook: calls.append(t.shape[1]))]):
        model.generate(**inputs, max_new_tokens=4, return_type="tokens", stop_at_eos=False)
    assert calls == [inputs["input_ids"].shape[1], 1, 1, 1]
    # an edit applied during generation changes what is generated
    plain = model.generate(**inputs, max_new_tokens=6, return_type="tokens", stop_at_eos=False)
    edited = model.generate(**inputs, max_new_tokens=6, return_type="tokens", stop_at_eos=False,
                            fwd_hooks=[("blocks.1.hook_resid_post", lambda t, hook: -3 * t)])
    assert not torch.equal(plain, edited)
