"""TransformerLens's model API on HookedVLM (hooked_vlm.tl_compat, hooked_vlm.hook_names): token helpers, weight views,
config names, hook.layer(), get_act_name and the LM / image-path name filters.

The token-helper tests mirror TransformerLens's ``tests/unit/test_tokenization_methods.py`` and
``tests/unit/test_utils.py::test_to_str_tokens`` (named in each docstring), on toy-llava's word-level tokenizer
(``<s>`` = 1 is its BOS, added by the tokenizer; ``<pad>`` = 0).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests import tiny

SENTENCE = "what colour is the shape ?"


@pytest.fixture(scope="module")
def toy():
    from hooked_vlm import HookedVLM
    from hooked_vlm.toy.data import make_scene, prompt

    model = HookedVLM.from_pretrained("toy-llava")
    scene = make_scene(np.random.default_rng(0), colour="red", shape="circle")
    return model, model.prepare_inputs(images=scene.pil(), text=prompt("colour"))


def _ids(model, words):
    return [model.tokenizer.convert_tokens_to_ids(w) for w in words.split()]


# ------------------------------------------------------------------ tokenization (TL test_tokenization_methods.py)
def test_to_tokens_default_and_without_bos(toy):
    """TL: test_to_tokens_default, test_to_tokens_without_bos, test_to_tokens_device."""
    model, _ = toy
    words = _ids(model, SENTENCE)
    assert model.to_tokens(SENTENCE).tolist() == [[1] + words]
    assert model.to_tokens(SENTENCE, prepend_bos=False).tolist() == [words]
    assert model.to_tokens(SENTENCE, prepend_bos=True).tolist() == [[1] + words]  # no second BOS
    assert model.to_tokens(SENTENCE, add_special_tokens=False, prepend_bos=True).tolist() == [[1] + words]
    assert torch.equal(model.to_tokens(SENTENCE, move_to_device=False), model.to_tokens(SENTENCE, move_to_device=True))


def test_to_tokens_left_and_right_padding(toy):
    """TL: test_to_tokens_with_left_pad_and_multiple_sequences(_and_prepend_bos), test_to_tokens_with_left_pad_and_
    equal_sequences (TL's ``left_pad=True`` is ``padding_side="left"`` here, as in TL 3)."""
    model, _ = toy
    short, long = "red circle", "what colour is it"
    a, b = _ids(model, short), _ids(model, long)
    assert model.to_tokens([short, long], prepend_bos=False).tolist() == [a + [0, 0], b]
    assert model.to_tokens([short, long], prepend_bos=False, padding_side="left").tolist() == [[0, 0] + a, b]
    assert model.to_tokens([short, long], padding_side="left").tolist() == [[0, 0, 1] + a, [1] + b]
    assert model.to_tokens([short, short], padding_side="left").tolist() == [[1] + a] * 2
    with pytest.raises(ValueError, match="padding_side"):
        model.to_tokens(short, padding_side="middle")


def test_to_string(toy):
    """TL: test_to_string_from_to_tokens_without_bos, test_to_string_multiple."""
    model, _ = toy
    assert model.to_string(model.to_tokens(SENTENCE, prepend_bos=False)[0]) == SENTENCE
    assert model.to_string(torch.tensor([[1] + _ids(model, "red"), _ids(model, "blue circle")])) == ["<s> red", "blue circle"]
    assert model.to_string([_ids(model, "red")[0]]) == "red"
    with pytest.raises(ValueError, match=r"\[pos\] or \[batch, pos\]"):
        model.to_string(torch.zeros(1, 1, 2, dtype=torch.long))


def test_to_str_tokens(toy):
    """TL: test_to_str_tokens_default, test_to_str_tokens_without_bos, test_utils.py::test_to_str_tokens (tensors and
    arrays of shape [1], [1, 1], [1, 3]), test_to_single_str_token; plus image inputs."""
    model, inputs = toy
    assert model.to_str_tokens("red circle") == ["<s>", "red", "circle"]
    assert model.to_str_tokens("red circle", prepend_bos=False) == ["red", "circle"]
    assert model.to_str_tokens(["red", "blue circle"]) == [["<s>", "red"], ["<s>", "blue", "circle"]]
    for ids in ([6], [[6]], [[1, 2, 3]]):
        for arr in (torch.tensor(ids), np.array(ids)):
            out = model.to_str_tokens(arr)
            assert isinstance(out, list) and len(out) == np.array(ids).size and all(isinstance(s, str) for s in out)
    assert model.to_single_str_token(_ids(model, "red")[0]) == "red"
    # a tensor of ids holding image placeholders (issue 23: it raised), and the inputs dict placing them on the grid
    ids = inputs["input_ids"]
    n_img = int((ids == model.cfg.roles.image_token_id).sum())
    assert model.to_str_tokens(ids).count("<image>") == n_img and model.to_str_tokens(ids[0]) == model.to_str_tokens(ids)
    placed = model.to_str_tokens(inputs)
    assert len(placed) == ids.shape[1] and placed.count("<img 0,0>") == 1 and "<image>" not in placed
    with pytest.raises(ValueError, match="integer token ids"):
        model.to_str_tokens(torch.tensor([1.5, 2.0]))


def test_get_token_position(toy):
    """TL: test_get_token_position_not_found, _str, _str_without_bos, _int_pos, _int_pos_last, _int_1_pos."""
    model, inputs = toy
    assert model.get_token_position("is", SENTENCE) == 3
    assert model.get_token_position("is", SENTENCE, prepend_bos=False) == 2
    assert model.get_token_position(2, torch.tensor([2.0, 3, 4])) == 0
    assert model.get_token_position(2, torch.tensor([2.0, 3, 4]), prepend_bos=False) == 0
    assert model.get_token_position(2, torch.tensor([2.0, 3, 4, 2, 5]), mode="last") == 3
    assert model.get_token_position(2, torch.tensor([[2.0, 3, 4]])) == 0
    with pytest.raises(ValueError, match="does not occur"):
        model.get_token_position("red", SENTENCE)
    with pytest.raises(ValueError, match="'first' or 'last'"):
        model.get_token_position("is", SENTENCE, mode="middle")
    # on prepare_inputs output: positions of the expanded sequence (36 image tokens before the question)
    colour = model.get_token_position("colour", inputs)
    assert inputs["input_ids"][0, colour] == model.to_single_token("colour") and colour > 36


def test_tokens_to_residual_directions_shapes(toy):
    """TL: test_tokens_to_residual_directions (one token -> [d_model]); a [batch, pos] tensor -> [batch, pos, d_model]."""
    model, _ = toy
    assert model.tokens_to_residual_directions(model.to_tokens("")).shape == (model.cfg.d_model,)
    ids = torch.tensor([[3, 4, 5], [6, 7, 8]])
    dirs = model.tokens_to_residual_directions(ids)
    assert dirs.shape == (2, 3, model.cfg.d_model)
    assert torch.equal(dirs[1, 2], model.unembed.weight[8]) and torch.equal(dirs[0, 1], model.unembed.weight[4])
    assert torch.equal(model.tokens_to_residual_directions("red"), model.unembed.weight[model.to_single_token("red")])


def test_generate_on_a_text_prompt(toy):
    """TL's ``model.generate("text")``: a text-only prompt, the same tokens as generating from its ids."""
    model, inputs = toy
    text = "user : what colour is the shape ? assistant :"
    out = model.generate(text, max_new_tokens=3, stop_at_eos=False)
    ids = model.to_tokens(text)
    same = model.generate(ids, max_new_tokens=3, stop_at_eos=False, return_type="tokens")
    assert out == [model.tokenizer.decode(same[0, ids.shape[1]:], skip_special_tokens=True)]
    assert len(model.generate([text, "red"], max_new_tokens=2)) == 2
    with pytest.raises(ValueError, match="prepare_inputs"):
        model.generate(text, pixel_values=inputs["pixel_values"], max_new_tokens=1)


# ------------------------------------------------------------------ config names, weight views
def test_cfg_n_ctx_and_model_name(toy):
    model, _ = toy
    assert model.cfg.model_name == "toy-llava"
    assert model.cfg.n_ctx == model.cfg.text.max_position_embeddings == 128


def test_weight_views_with_biases_match_hf():
    """b_Q / b_K / b_V / b_O / b_in / b_out / W_gate and QK / OV read HF's own tensors (GQA, biases everywhere)."""
    b = tiny.llava(text=tiny.llama_text_config(num_key_value_heads=2, attention_bias=True, mlp_bias=True))
    model, lm = b.model, b.hf.model.language_model
    L, H, KV, dh, d = model.cfg.n_layers, model.cfg.n_heads, model.cfg.n_key_value_heads, model.cfg.d_head, model.cfg.d_model
    assert model.b_Q.shape == (L, H, dh) and model.b_K.shape == model.b_V.shape == (L, KV, dh)
    assert model.W_gate.shape == model.W_in.shape == (L, d, model.cfg.d_mlp) and model.b_in.shape == (L, model.cfg.d_mlp)
    assert model.QK.AB.shape == model.OV.AB.shape == (L, H, d, d)
    for l, layer in enumerate(lm.layers):
        att, mlp = layer.self_attn, layer.mlp
        assert torch.equal(model.b_Q[l], att.q_proj.bias.view(H, dh)) and torch.equal(model.b_K[l], att.k_proj.bias.view(KV, dh))
        assert torch.equal(model.b_V[l], att.v_proj.bias.view(KV, dh)) and torch.equal(model.b_O[l], att.o_proj.bias)
        assert torch.equal(model.b_in[l], mlp.up_proj.bias) and torch.equal(model.b_out[l], mlp.down_proj.bias)
        assert torch.equal(model.W_gate[l], mlp.gate_proj.weight.T)
        wq = att.q_proj.weight.view(H, dh, d)  # [head, d_head, d_model]
        wk, wv = att.k_proj.weight.view(KV, dh, d), att.v_proj.weight.view(KV, dh, d)
        wo = att.o_proj.weight.view(d, H, dh)
        for h in (0, H - 1):
            kv = h // (H // KV)
            assert (model.QK.AB[l, h] - wq[h].T @ wk[kv]).abs().max().item() <= 1e-6
            assert (model.OV.AB[l, h] - wv[kv].T @ wo[:, h].T).abs().max().item() <= 1e-6
    assert model.b_U.shape == (model.cfg.d_vocab,) and not model.b_U.any()


def test_moe_weight_views_and_deepstack_decomposition_raise():
    """Qwen3-VL-MoE: dense-MLP views name the MoE blocks; TL's residual decomposition would miss DeepStack's additions."""
    from tests import tiny_qwen3vl

    b = tiny_qwen3vl.qwen3vl(moe=True)
    with pytest.raises(ValueError, match="mixture-of-experts"):
        b.model.W_in  # noqa: B018
    _, cache = b.model.run_with_cache(**b.inputs)
    with pytest.raises(NotImplementedError, match="DeepStack"):
        cache.decompose_resid()
    with pytest.raises(NotImplementedError, match="DeepStack"):
        cache.get_full_resid_decomposition(expand_neurons=False)
    with pytest.raises(NotImplementedError, match="mixture-of-experts"):
        cache.stack_neuron_results(1)


# ------------------------------------------------------------------ hook names
def test_hook_layer_on_lm_and_vision_hooks(toy):
    """TL's ``hook.layer()`` (HookPoint.layer: 'blocks.{l}.' -> l), also under the vision tower's prefix."""
    model, inputs = toy
    seen = {}

    def record(t, hook):
        seen[hook.name] = hook.layer()

    names = ["vision.blocks.0.hook_resid_post", "vision.blocks.0.attn.hook_z", "blocks.1.attn.hook_z", "blocks.0.hook_resid_pre"]
    model.run_with_hooks(**inputs, fwd_hooks=[(n, record) for n in names])
    assert seen == {"vision.blocks.0.hook_resid_post": 0, "vision.blocks.0.attn.hook_z": 0, "blocks.1.attn.hook_z": 1,
                    "blocks.0.hook_resid_pre": 0}
    for name in ("hook_embed", "vision.hook_embed", "ln_final.hook_scale"):
        with pytest.raises(ValueError, match="not inside a block"):
            model.hook_dict[name].layer()


def test_get_act_name_follows_transformer_lens_3(toy):
    """The examples of TL 3's ``transformer_lens.utils.get_act_name`` docstring, plus ``vision=True``; every name it
    gives for toy-llava is a real hook point."""
    from hooked_vlm import get_act_name

    assert get_act_name("k", 6, "a") == "blocks.6.attn.hook_k"
    assert get_act_name("pre", 2) == "blocks.2.mlp.hook_pre"
    assert get_act_name("embed") == "hook_embed"
    assert get_act_name("normalized", 27, "ln2") == "blocks.27.ln2.hook_normalized"
    assert get_act_name("k6") == "blocks.6.attn.hook_k"
    assert get_act_name("scale4ln1") == "blocks.4.ln1.hook_scale"
    assert get_act_name("pre5") == "blocks.5.mlp.hook_pre"
    assert get_act_name("resid_post", 3) == "blocks.3.hook_resid_post"
    assert get_act_name("attn", 1) == "blocks.1.attn.hook_pattern"  # TL's alias
    assert get_act_name("scale") == "ln_final.hook_scale"
    assert get_act_name("blocks.0.hook_z") == "blocks.0.hook_z"
    assert get_act_name("resid_post", 0, vision=True) == "vision.blocks.0.hook_resid_post"
    assert get_act_name("pattern", 0, vision=True) == "vision.blocks.0.attn.hook_pattern"
    with pytest.raises(ValueError, match="already holds a layer"):
        get_act_name("k6", 2)
    model, _ = toy
    for args, kw in [(("resid_pre", 1), {}), (("z", 0), {}), (("post", 1), {}), (("scale", 0, "ln2"), {}),
                     (("normalized",), {}), (("resid_mid", 0), dict(vision=True)), (("embed",), dict(vision=True))]:
        assert get_act_name(*args, **kw) in model.hook_dict, (args, kw)


def test_lm_and_vision_hook_filters(toy):
    """``lm_hooks`` / ``vision_hooks`` split hook_dict in two; as names_filter they cache only their side."""
    from hooked_vlm import lm_hooks, vision_hooks

    model, inputs = toy
    names = list(model.hook_dict)
    lm, vis = [n for n in names if lm_hooks(n)], [n for n in names if vision_hooks(n)]
    assert sorted(lm + vis) == sorted(names) and not set(lm) & set(vis)
    assert {"hook_embed", "blocks.0.hook_resid_post", "ln_final.hook_normalized"} <= set(lm)
    assert {"vision.blocks.0.hook_resid_post", "projector.hook_out", "hook_image_embeds"} <= set(vis)
    _, cache = model.run_with_cache(**inputs, names_filter=vision_hooks)
    assert set(cache.keys()) == set(vis)
    _, cache = model.run_with_cache(**inputs, names_filter=lambda n: lm_hooks(n) and n.endswith("hook_resid_post"))
    assert set(cache.keys()) == {f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)}
