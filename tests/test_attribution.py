"""patch_attribution: per-(layer, head, source) direct logit attribution, checked against hand computations
from a cache, against hook_attn_out, and on the trained toy LLaVA (the object's patches carry the colour)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from hooked_vlm.analysis import patch_attribution
from tests import tiny, tiny_paligemma


@torch.no_grad()
def hand_attribution(model, inputs, ids, query_pos):
    """[batch, layer, head, pos] from a run_with_cache, head by head and source by source, with the post-attention
    and final norms' scales read from the cache (TransformerLens's apply_ln_to_stack convention)."""
    _, cache = model.run_with_cache(**inputs, names_filter=lambda n: n.endswith(("hook_pattern", "hook_v", "hook_scale")))
    cfg = model.cfg.text
    rep = cfg.n_heads // cfg.n_key_value_heads
    B, P = inputs["input_ids"].shape
    out = torch.zeros(B, cfg.n_layers, cfg.n_heads, P)
    fw = model.ln_final.w + model.ln_final.weight_offset
    for b in range(B):
        q = int(query_pos[b])
        u = model.W_U[:, ids[b][0]] - (model.W_U[:, ids[b][1]] if len(ids[b]) == 2 else 0)
        for l in range(cfg.n_layers):
            block = model.blocks[l]
            for h in range(cfg.n_heads):
                src = cache[f"blocks.{l}.attn.hook_pattern"][b, h, q, :q + 1, None] * (
                    cache[f"blocks.{l}.attn.hook_v"][b, :q + 1, h // rep] @ block.attn.W_O[h])  # [source, d_model]
                if cfg.norm_placement == "sandwich":  # Gemma: the attention output is RMS-normed before it is added
                    src = src / cache[f"blocks.{l}.ln1_post.hook_scale"][b, q, 0] * (block.ln1_post.w + 1.0)
                out[b, l, h, :q + 1] = (src / cache["ln_final.hook_scale"][b, q, 0] * fw) @ u
    return out


@pytest.fixture(scope="module")
def llava():
    built = tiny.llava()  # 3 layers, 4 heads; batch of 3: left padding 3 / 0 / 0, item 2 has two images
    return built.model, built.inputs


@functools.lru_cache(maxsize=None)
def gemma2():
    """PaliGemma 2 (Gemma 2 LM): GQA 4/2, sandwich norms, 1 + w RMS weights, o_proj bias, final soft-cap 3.0."""
    from hooked_vlm import HookedVLM

    folder, hf = tiny_paligemma.make_paligemma(text=tiny_paligemma.gemma2_text_config(attention_bias=True),
                                               processor=False)
    inputs = tiny_paligemma.paligemma_batch(hf, [7, 5], [0, 4], [2, 0])
    return HookedVLM.from_pretrained(str(folder)), inputs


def test_equals_a_hand_computation_from_the_cache(llava):
    model, inputs = llava
    ids = [(5, 7)] * 3
    r = patch_attribution(model, inputs, target=(5, 7))
    last = inputs["input_ids"].shape[1] - 1
    assert r.query_positions.tolist() == [last] * 3
    want = hand_attribution(model, inputs, ids, r.query_positions)
    assert r.attribution.shape == (3, 3, 4, inputs["input_ids"].shape[1])
    assert (r.attribution - want).abs().max() <= 1e-5 * max(1.0, float(want.abs().max()))
    assert float(want.abs().max()) > 1e-3  # the comparison is not between two zeros


def test_gemma2_gqa_sandwich_bias_equals_the_hand_computation_and_the_attention_output():
    model, inputs = gemma2()
    with torch.no_grad():
        logits = model(**inputs)[:, -1]
    top = logits.abs().argmax(-1)  # per item, the token whose logit the cap bends most
    r = patch_attribution(model, inputs, target=top)  # one target per item
    want = hand_attribution(model, inputs, top[:, None].tolist(), r.query_positions)
    assert (r.attribution - want).abs().max() <= 1e-5 * max(1.0, float(want.abs().max()))
    assert float(r.bias.abs().min()) > 1e-4  # o_proj bias is there and is accounted for
    # sum over heads and sources + bias == blocks.{l}.hook_attn_out projected (a different activation)
    assert (r.attribution.sum((2, 3)) + r.bias - r.attn_total).abs().max() <= 1e-5
    assert r.frozen_norms == ["ln_final"] + [f"blocks.{l}.ln1_post" for l in range(4)]
    # the attribution is to the logit BEFORE the final soft-cap: cap * tanh(logit / cap) is the model's logit
    assert r.softcap == 3.0
    assert (3.0 * torch.tanh(r.logit / 3.0) - logits[torch.arange(2), top]).abs().max() <= 1e-5
    assert float(r.logit.abs().max()) > 3.0  # big enough that the cap bends it


def test_direct_terms_sum_to_the_logit_and_attention_sums_to_attn_out(llava):
    model, inputs = llava
    r = patch_attribution(model, inputs, target=(5, 7))
    assert (r.attribution.sum((2, 3)) + r.bias - r.attn_total).abs().max() <= 1e-5
    total = r.embed_total + r.attn_total.sum(1) + r.mlp_total.sum(1)
    assert (total - r.logit).abs().max() <= 1e-4
    with torch.no_grad():
        logits = model(**inputs)[:, -1]
    assert (logits[:, 5] - logits[:, 7] - r.logit).abs().max() <= 1e-4
    # the query cannot attend to padding or to later positions: those sources get exactly 0
    assert float(r.attribution[0, :, :, :3].abs().max()) == 0.0


def test_query_position_layers_and_bad_input(llava):
    model, inputs = llava
    full = patch_attribution(model, inputs, target=5)
    mid = patch_attribution(model, inputs, target=5, query=10)
    assert mid.query_positions.tolist() == [10, 10, 10]
    assert float(mid.attribution[..., 11:].abs().max()) == 0.0 and float(mid.attribution.abs().max()) > 0
    some = patch_attribution(model, inputs, target=5, layers=[-1])
    assert float(some.attribution[:, :2].abs().max()) == 0.0
    # layers 0-1 then take the fast attention path: equal up to float rounding
    assert (some.attribution[:, 2] - full.attribution[:, 2]).abs().max() <= 1e-6
    with pytest.raises(ValueError, match="exactly one position"):
        patch_attribution(model, inputs, target=5, query="image")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        patch_attribution(model, inputs, target=10_000)
    with pytest.raises(ValueError, match="pair"):
        patch_attribution(model, inputs, target=(1, 2, 3))
    with pytest.raises(ValueError, match="out of range"):
        patch_attribution(model, inputs, target=5, layers=[7])


def test_layernorm_direction_is_centred():
    # no converted LM uses a LayerNorm, so check the LayerNorm branch on the norm itself: with its scale frozen,
    # x . through_norm(d) / scale == (LN(x) - bias) . d for any x
    from hooked_vlm.analysis.attribution import through_norm
    from hooked_vlm.components.norms import LayerNorm

    g = torch.Generator().manual_seed(0)
    ln = LayerNorm(16, 1e-5)
    with torch.no_grad():
        ln.w.copy_(torch.randn(16, generator=g))
        ln.b.copy_(torch.randn(16, generator=g))
    x, d = torch.randn(1, 5, 16, generator=g) * 3 + 1, torch.randn(1, 16, generator=g)
    got = []
    ln.hook_scale.add_hook(lambda t, hook: got.append(t))
    try:
        with torch.no_grad():
            out = ln(x)
            lhs = (x[0] @ through_norm(d, ln)[0]) / got[0][0, :, 0]
            rhs = (out[0] - ln.b) @ d[0]
    finally:
        ln.hook_scale.remove_hooks()
    assert (lhs - rhs).abs().max() <= 1e-5 * float(rhs.abs().max())


# ------------------------------------------------------------------ the trained toy LLaVA
@pytest.fixture(scope="module")
def toy():
    from hooked_vlm import HookedVLM
    from hooked_vlm.toy.data import make_scenes
    from hooked_vlm.toy.tasks import ToyEncoder

    model = HookedVLM.from_pretrained("toy-llava")
    enc = ToyEncoder(model.processor)
    scenes = make_scenes(40, 5)
    b = enc.batch(scenes, ("colour",))
    n = enc.first_answer_position("colour") + 1
    inputs = dict(input_ids=b["input_ids"][:, :n], attention_mask=b["attention_mask"][:, :n], pixel_values=b["pixel_values"])
    return model, scenes, inputs


def test_toy_object_patches_carry_most_of_the_colour_attribution(toy):
    model, scenes, inputs = toy
    colours = torch.tensor([model.to_single_token(s.objects[0].colour) for s in scenes])
    r = patch_attribution(model, inputs, target=colours)
    shares, fractions = [], []
    for i, s in enumerate(scenes):
        pos = r.spans.positions("image", i)
        mask = torch.zeros(r.spans.seq_len, dtype=torch.bool)
        mask[pos[s.object_patches(0)]] = True
        per = r.per_position(i)
        shares.append(float(per[mask].sum() / per[pos].sum()))
        fractions.append(len(s.object_patches(0)) / len(pos))
        if i == 0:  # the result's own helper agrees with the loop
            assert abs(r.share(mask[None].expand(r.spans.batch, -1), within="image", batch=0) - shares[0]) <= 1e-6
    # measured (docs/attribution.md, 2 x 100 scenes): mean 0.91 / 0.89, 5th percentile 0.74 / 0.75, while the
    # object covers 19% of the patches
    assert np.mean(shares) >= 0.80, np.mean(shares)
    assert np.percentile(shares, 10) >= 0.55, np.percentile(shares, 10)
    assert np.mean(fractions) <= 0.25
    # the image positions carry most of the attention's direct effect on the colour logit
    img = r.spans.mask("image")
    image_part = torch.stack([r.per_position(i)[img[i]].sum() for i in range(len(scenes))])
    assert float((image_part / r.attribution.sum((1, 2, 3))).mean()) >= 0.8


def test_plot_and_grid(toy):
    import matplotlib

    matplotlib.use("Agg")
    model, scenes, inputs = toy
    one = {k: v[:1] for k, v in inputs.items()}
    r = patch_attribution(model, one, target=scenes[0].objects[0].colour)
    grid = r.to_grid()
    assert grid.shape == (6, 6)
    assert abs(float(grid.sum()) - float(r.per_position(0)[r.spans.mask("image")[0]].sum())) <= 1e-5
    assert r.to_grid(by="head").shape == (2, 4, 6, 6)
    colour = scenes[0].objects[0].colour
    fig = r.plot(scenes[0].image)
    assert f"logit({colour})" in fig._suptitle.get_text()
    assert any(ax.get_label() == "<colorbar>" for ax in fig.axes)
    assert fig.axes[0].get_xlabel() == "patch column" and fig.axes[0].get_ylabel() == "patch row"
    df = r.to_dataframe()
    assert len(df) == 2 * 4 * r.spans.seq_len and abs(df["attribution"].sum() - float(r.attribution.sum())) <= 1e-4
