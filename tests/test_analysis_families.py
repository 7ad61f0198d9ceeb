"""The analyses run unchanged on other families (they use only hook names and spans)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hooked_vlm.analysis import (activation_patching, attention_flow, attention_knockout, forward_with_hooks,
                                 logit_lens, span_mask)
from hooked_vlm.analysis import spans_of
from tests.test_hooks import FAMILIES

ATOL = 1e-4
#: one family per kind of image region: markers + image codes, row breaks, tiles + newlines, 3-D rope; bidirectional
#: image blocks (Gemma 3), DeepStack and experts (Qwen3-VL), tiles + thumbnail (InternVL), resampler latents (Idefics2),
#: tiles with markers between them and parallel NoPE / RoPE blocks (Aya Vision);
#: GLM-4.xV (sandwich post-norms, grouped sigmoid MoE routing);
#: the LLaVA-like declarations (issue 27): Granite's scaled stream, merged Pixtral grid, normed projector, post-norm tower
CASES = ["chameleon", "emu3", "pixtral_llava", "llava_onevision", "qwen2_vl", "gemma3", "qwen3vl", "qwen3vl_moe", "internvl",
         "idefics2", "aya_vision", "vipllava", "granite_vision", "lighton_ocr", "llava_next_video", "deepseek_vl",
         "glm4v", "glm4v_moe",  # GLM-4.1V: sandwich post-norms; GLM-4.5V: grouped sigmoid router
         "ovis2",  # Ovis 2: image embeddings = visual-word probabilities x table; markers embedded by the table
         "exaone4_5",  # EXAONE 4.5: post-sublayer norms only, sliding-window layers and NoPE global layers
         "hunyuan_vl",  # HunYuanVL: begin / row-break / end embeddings inside the image run, 4-axis positions
         "deepseek_vl_hybrid",  # two towers (SAM ViT beside SigLIP) combined in the projector
         "got_ocr2",  # SAM ViT alone, conv-downsampled grid between <img> / </img>
         "molmo2"]  # Molmo 2: image features added onto <im_patch>, one bidirectional block, two grids per image


@pytest.mark.parametrize("family", CASES)
def test_analyses_on_family(family):
    model, inputs = FAMILIES[family]()
    spans = spans_of(model, inputs)
    real = spans.mask("pad").logical_not()
    logits = forward_with_hooks(model, inputs)
    # logit lens: the last readout is the model's prediction (text readout when the model has image codes)
    lens = logit_lens(model, inputs, span="all", layers=[0, -1], top_k=1)
    final = logits[lens.batch_index, lens.positions]
    if lens.vocab == "text":  # Chameleon, Emu3: compare with the best text token of the model's logits
        text_ids = model.vocab_roles.text_ids
        assert len(model.vocab_roles.image_code_ids) > 0
        ref = text_ids[final[:, text_ids].argmax(-1)]
    else:
        ref = final.argmax(-1)
    assert torch.equal(lens.top_ids[-1, :, 0], ref)
    # knockout: the fast-path mask equals -inf on the scores by hand
    ko = attention_knockout(model, inputs, src="image_region", dst="after_image", layers=[0])

    def by_hand(scores, hook):
        q = span_mask(hook.spans, "after_image")[:, hook.query_positions]
        k = span_mask(hook.spans, "image_region")[:, : scores.shape[-1]]
        return scores.masked_fill(q[:, None, :, None] & k[:, None, None, :], float("-inf"))

    hand = forward_with_hooks(model, inputs, [("blocks.0.attn.hook_attn_scores", by_hand)])
    assert (ko - hand)[real].abs().max().item() <= ATOL
    # attention flow vs the cached pattern: the roles split the whole text -> image-region mass (disjoint, nothing
    # left out), and the eoi / image_last roles hold the mass at those positions
    flow = attention_flow(model, inputs, layers=[0]).set_index("role")
    _, cache = model.run_with_cache(**inputs, names_filter="blocks.0.attn.hook_pattern")
    per_key = []  # per item with text after the image: mean over those query rows of the head-summed pattern
    for b in range(spans.batch):
        q = span_mask(spans, "after_image")[b]
        if q.any():
            per_key.append((b, cache["blocks.0.attn.hook_pattern"][b].sum(0)[q].mean(0)))
    mass = lambda span: float(np.mean([row[span_mask(spans, span)[b]].sum().item() for b, row in per_key]))
    total = mass("image_region")
    assert abs(flow.weight.sum() - total) <= ATOL and abs(flow.loc["image_last", "weight"] - mass("image_last")) <= ATOL
    if "eoi" in spans:
        assert abs(flow.loc["eoi", "weight"] - mass("eoi")) <= ATOL
    assert np.abs(flow.share.values - flow.weight.values / total).max() <= ATOL
    assert (flow.n == len(per_key)).all() and len(per_key) >= 1
    # patching every position of the residual from run A into a run with other pixels reproduces A
    other = dict(inputs)
    pv = inputs["pixel_values"]  # (noise only where there are pixels: all-zero entries are batch padding for Idefics)
    other["pixel_values"] = pv + 0.5 * torch.randn_like(pv.float()).to(pv.dtype) * (pv != 0)
    # (DeepStack, Qwen3-VL: image features are ADDED again after blocks 0 .. deepstack_layers-1, so the residual
    # carries all of A only from blocks.{deepstack_layers}.hook_resid_pre on; earlier, B's features still come in)
    first_full = model.cfg.text.deepstack_layers
    out = activation_patching(model, other, inputs, span="all", layers=first_full)
    assert (out - logits)[real].abs().max().item() <= ATOL
    if first_full:
        early = activation_patching(model, other, inputs, span="all", layers=0)
        assert (early - logits)[real].abs().max().item() > 1e-3
