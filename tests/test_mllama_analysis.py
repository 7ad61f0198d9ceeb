"""Key spans and the analyses defined for keys (hooked_vlm.analysis.cross_attention), each against a hand computation
on the tiny Mllama; position-based analyses that would name the image refuse, saying why."""

from __future__ import annotations

import pytest
import torch

from hooked_vlm.analysis import attention_knockout, span_ablation
from hooked_vlm.analysis.cross_attention import (cross_attention_flow, cross_attention_knockout, cross_knockout_hooks,
                                                 cross_layers, key_ablation_hook, key_logit_lens, key_patching, key_steering)
from tests import tiny_mllama as tml

ATOL = 1e-5


def _b():
    return tml.mllama()


def _cache(inputs=None, names=None):
    b = _b()
    with torch.no_grad():
        return b.model.run_with_cache(**(inputs or b.inputs), names_filter=names)


def test_key_spans_describe_the_key_axis():
    _, cache = _cache(names="hook_image_embeds")
    kv = cache.kv_spans
    assert kv.n_keys == cache["hook_image_embeds"].shape[1] == 2 * 2 * 17  # 2 image slots x 2 tiles x 17
    assert kv.tile_grids == [[(1, 2), (1, 1)], [(1, 1)], [(2, 1)]]
    assert kv.mask("image").sum(1).tolist() == [3 * 17, 17, 2 * 17]  # real tiles only
    assert kv.mask("cls").sum(1).tolist() == [3, 1, 2]
    assert not bool((kv.mask("image") & kv.mask("padding")).any()) and bool((kv.mask("image") | kv.mask("padding")).all())
    assert kv.positions("image.1", 0).tolist() == list(range(34, 51))  # slot 1, tile 0
    values = torch.arange(kv.n_keys, dtype=torch.float32)
    tall = kv.to_grid(values, image=0, batch=2)  # a 2x1 image: tile 1 below tile 0
    assert tall.shape == (8, 4) and tall[0, 0] == 1 and tall[4, 0] == 18 and tall[7, 3] == 33
    wide = kv.to_grid(values, image=0, batch=0)
    assert wide.shape == (4, 8) and wide[0, 4] == 18
    assert kv.to_grid(values, image=0, batch=0, tile=1)[0].tolist() == [18, 19, 20, 21]
    with pytest.raises(ValueError, match="has no image 1"):
        kv.to_grid(values, image=1, batch=1)


def _hand_z(scores, v, keep):
    """softmax over the allowed keys (``keep`` bool [batch, 1, q, key] AND the scores' own mask) @ v (GQA repeated)."""
    n_rep = scores.shape[1] // v.shape[2]
    s = scores.masked_fill(~keep, float("-inf"))
    p = torch.softmax(s, -1)
    p = torch.nan_to_num(p, nan=0.0)  # rows with no key left: zeros
    vh = v.transpose(1, 2).repeat_interleave(n_rep, 1)
    return (p @ vh).transpose(1, 2)


def test_knockout_through_the_cross_attention_mask_equals_a_hand_computation():
    b = _b()
    names = ["blocks.1.cross_attn.hook_attn_scores", "blocks.1.cross_attn.hook_v", "blocks.1.cross_attn.hook_z"]
    _, clean = _cache(names=names)
    knock = cross_knockout_hooks(b.model, "image.0", "text", layers=1)
    with torch.no_grad(), b.model.hooks(fwd_hooks=knock):
        _, knocked = b.model.run_with_cache(**b.inputs, names_filter=names[2:])
    kv, spans = clean.kv_spans, clean.spans
    rows = spans.mask("text")[:, None, :, None]
    cols = kv.mask("image.0")[:, None, None, :]
    keep = ~(rows & cols)
    hand = _hand_z(clean["blocks.1.cross_attn.hook_attn_scores"], clean["blocks.1.cross_attn.hook_v"], keep)
    assert (hand - knocked["blocks.1.cross_attn.hook_z"]).abs().max() <= ATOL
    # row 0 between its placeholders sees only image 0: nothing left, zeros; after the second it sees image 1 only
    ids = b.inputs["input_ids"][0].tolist()
    first, second = [p for p, t in enumerate(ids) if t == tml.IMAGE_TOKEN]
    assert knocked["blocks.1.cross_attn.hook_z"][0, first + 1:second].abs().max() == 0
    assert (knocked["blocks.1.cross_attn.hook_z"][0, second:] - clean["blocks.1.cross_attn.hook_z"][0, second:]).abs().max() <= ATOL
    logits = cross_attention_knockout(b.model, b.inputs, "image.0", "text")
    with torch.no_grad():
        plain = b.model(**b.inputs)
    assert (logits[0, first + 1] - plain[0, first + 1]).abs().max() > 1e-3  # the knockout changes what it should
    assert (logits[0, :first] - plain[0, :first]).abs().max() > 0  # (HF's rule: those rows read image 0 too)


def test_key_ablation_zero_and_mean_at_the_projector_output():
    b = _b()
    _, clean = _cache(names=["hook_image_embeds"])
    for how in ("zero", "mean"):
        with torch.no_grad(), b.model.hooks(fwd_hooks=[("hook_image_embeds", key_ablation_hook("image.0", how))]):
            _, abl = b.model.run_with_cache(**b.inputs, names_filter=["hook_image_embeds", "blocks.1.cross_attn.hook_k"])
        x, y = clean["hook_image_embeds"], abl["hook_image_embeds"]
        sel = clean.kv_spans.mask("image.0")
        assert torch.equal(y[~sel], x[~sel])
        for r in range(3):
            want = torch.zeros_like(x[r, sel[r]]) if how == "zero" else x[r, sel[r]].mean(0).expand_as(x[r, sel[r]])
            assert (y[r, sel[r]] - want).abs().max() <= ATOL
        if how == "zero":  # RMS k-norm of a zero vector is zero: the ablated keys score 0 and carry no value
            assert abl["blocks.1.cross_attn.hook_k"][sel].abs().max() == 0


def test_key_patching_of_every_key_is_running_the_source_images():
    b = _b()
    source = dict(b.inputs, pixel_values=torch.randn(b.inputs["pixel_values"].shape, generator=torch.Generator().manual_seed(5))
                  * b.inputs["aspect_ratio_mask"][..., None, None, None])
    patched = key_patching(b.model, b.inputs, source, keys=["image", "padding"])
    with torch.no_grad():
        want = b.model(**source)
        plain = b.model(**b.inputs)
    assert (patched - want).abs().max() <= ATOL and (plain - want).abs().max() > 1e-3
    zero = key_steering(b.model, b.inputs, torch.zeros(b.model.cfg.d_model))
    assert (zero - plain).abs().max() <= ATOL


def test_attention_flow_over_keys_is_the_pattern_mass():
    b = _b()
    flow = cross_attention_flow(b.model, b.inputs, queries="last")
    _, cache = _cache(names=["blocks.3.cross_attn.hook_pattern"])
    p = cache["blocks.3.cross_attn.hook_pattern"]  # [batch, head, q, key]
    last = cache.spans.mask("last")
    kv = cache.kv_spans
    for r in range(3):
        row = p[r, :, last[r].nonzero()[0, 0]]  # [head, key]
        assert (flow[3][r, :, 0] - row[:, kv.mask("image.0")[r]].sum(-1)).abs().max() <= ATOL
    assert (flow[3][0, :, 1] - 1).abs().max() <= ATOL  # row 0's last word sees only image 1
    assert flow[3][0, :, 0].abs().max() <= ATOL
    assert flow[3][1, :, 1].abs().max() == 0  # image.1 exists only in row 0: no mass elsewhere
    assert sorted(flow) == cross_layers(b.model)


def test_logit_lens_on_the_projected_image_features():
    b = _b()
    lens = key_logit_lens(b.model, b.inputs)
    _, cache = _cache(names=["hook_image_embeds"])
    x = cache["hook_image_embeds"]
    w = b.model.ln_final.w
    hand = (w * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + b.model.ln_final.eps)) @ b.model.W_U
    assert lens.shape == (3, 68, b.model.cfg.d_vocab) and (lens - hand).abs().max() <= ATOL


def test_position_analyses_refuse_the_image_of_a_cross_attention_model():
    b = _b()
    with pytest.raises(ValueError, match="only in the keys|cross-attention keys"):
        attention_knockout(b.model, b.inputs, src="image")
    with pytest.raises(ValueError, match="cross-attention keys"):
        span_ablation(b.model, b.inputs, span="image")
    from tests import tiny

    with pytest.raises(ValueError, match="no cross-attention layers"):
        cross_attention_flow(tiny.llava().model, tiny.llava().inputs)
    with pytest.raises(ValueError, match="not cross-attention layers"):
        cross_layers(b.model, [0])


def test_cross_patch_attribution_sums_to_the_gated_attention_output():
    """Per (cross layer, head, key) terms sum to the projection of hook_attn_out (a different activation: the gated
    o_proj output); the image-0 keys of row 0 carry nothing at its last word (it sees image 1 only)."""
    from hooked_vlm.analysis.cross_attention import cross_patch_attribution

    b = _b()
    res = cross_patch_attribution(b.model, b.inputs, target=5)
    assert res.layers == [1, 3] and res.attribution.shape == (3, 2, 4, 68)
    assert (res.attribution.sum((2, 3)) - res.attn_total).abs().max() <= ATOL
    assert res.attn_total.abs().max() > 1e-3
    assert res.attribution[0][..., res.kv_spans.mask("image.0")[0]].abs().max() == 0
    assert res.kv_spans.to_grid(res.attribution[0, 1, 0], image=1).shape == (4, 4)


def test_patch_attribution_decomposes_the_self_attention_layers_only():
    from hooked_vlm.analysis import patch_attribution

    b = _b()
    res = patch_attribution(b.model, b.inputs, target=5)
    assert res.attribution[:, [1, 3]].abs().max() == 0 and res.attribution[:, [0, 2]].abs().max() > 0
    with pytest.raises(ValueError, match="cross_patch_attribution"):
        patch_attribution(b.model, b.inputs, target=5, layers=[1])


def test_position_knockout_skips_cross_layers_and_refuses_them_by_name():
    from hooked_vlm.analysis import knockout_hooks

    b = _b()
    hooks = knockout_hooks(b.model, src="text", dst="last")
    assert sorted(hooks.skipped) == [1, 3] and sorted(hooks.acted_on) == [0, 2]
    with pytest.raises(ValueError, match="cross_attention_knockout"):
        knockout_hooks(b.model, src="text", dst="last", layers=[1])
    with pytest.raises(ValueError, match="cross_attention_knockout"):
        knockout_hooks(b.model, src="text", dst="last", linear="remove_source")


def test_batch_slice_slices_the_key_spans():
    """cache.apply_slice_to_batch_dim keeps each item's key roles: item 2's kv_spans = the batch's row 2."""
    _, cache = _cache(names="hook_image_embeds")
    one = cache.apply_slice_to_batch_dim([2])
    assert one.kv_spans is not None and one.kv_spans.batch == 1 and one.kv_spans.tile_grids == [[(2, 1)]]
    assert torch.equal(one.kv_spans.mask("image")[0], cache.kv_spans.mask("image")[2])
    assert torch.equal(one.kv_spans.grid[0], cache.kv_spans.grid[2])
    both = cache.apply_slice_to_batch_dim(slice(0, 2))
    assert both.kv_spans.tile_grids == cache.kv_spans.tile_grids[:2]
    assert torch.equal(both.kv_spans.mask("cls"), cache.kv_spans.mask("cls")[:2])
