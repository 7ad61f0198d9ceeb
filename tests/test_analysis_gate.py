"""The gate finder: scores and rankings equal a hand computation from caches and knockouts by hand, and it
finds a gate made by construction (text may read the image region only through one chosen position)."""

from __future__ import annotations

import numpy as np
import torch

from hooked_vlm.analysis import find_gate, forward_with_hooks
from tests import tiny_analysis as ta

N_LAYERS = 3


BOI_POS, EOI_POS = 3, 20  # ta.example: BOS, 2 text tokens, BOI, 16 image tokens, EOI, text
#: a fixed order of the 18 region offsets: the crafted attention bias makes the shares follow it
ORDER = [11, 3, 17, 0, 8, 14, 5, 1, 16, 9, 2, 13, 6, 10, 15, 4, 12, 7]


def _data(n=2):
    _, hf = ta.model_and_hf()
    data = [ta.example(hf, s, text_after=4) for s in range(n)]  # same length: no padding, same positions
    assert all(_region(ex)[:2] == (BOI_POS, EOI_POS) for ex in data)
    return data


def _region(ex):
    """(BOI position, EOI position) from the token ids."""
    ids = ex["input_ids"][0].tolist()
    return ids.index(ta.BOI), ids.index(ta.EOI)


def _block_keys(keys, queries_from):
    """hook_attn_scores edit: -inf at query rows >= queries_from (whole prompt, no padding), keys in ``keys``."""
    def block(scores, hook):
        out = scores.clone()
        out[:, :, queries_from:, keys] = float("-inf")
        return out
    return block


def _bias_by_order(scores, hook):
    """Text after EOI prefers region offset ORDER[0] most, ORDER[-1] least: + 0.5 per place in the order."""
    out = scores.clone()
    for place, off in enumerate(ORDER):
        out[:, :, EOI_POS + 1:, BOI_POS + off] += 0.5 * (len(ORDER) - place)
    return out


def _hand_scores(model, ex, offsets):
    """Per region offset: attention from text after EOI (mean over rows, sum over heads, mean over layers); and for
    ``offsets``, KL / TV of the last position's next-token distribution when that key is blocked for those rows."""
    _, cache = model.run_with_cache(**ex, names_filter=lambda n: n.endswith("hook_pattern"))
    att = sum(cache[f"blocks.{l}.attn.hook_pattern"][0].sum(0)[EOI_POS + 1:, BOI_POS:EOI_POS + 1].mean(0)
              for l in range(N_LAYERS))
    att = (att / N_LAYERS).double().numpy()
    p = forward_with_hooks(model, ex)[0, -1].double().log_softmax(-1)
    kl, tv = np.full(18, np.nan), np.full(18, np.nan)
    for off in offsets:
        hooks = [(f"blocks.{l}.attn.hook_attn_scores", _block_keys([BOI_POS + off], EOI_POS + 1)) for l in range(N_LAYERS)]
        q = forward_with_hooks(model, ex, hooks)[0, -1].double().log_softmax(-1)
        kl[off] = float((p.exp() * (p - q)).sum())
        tv[off] = float(0.5 * (p.exp() - q.exp()).abs().sum())
    return att, kl, tv


def _rank_desc(x):
    """1 + how many values are strictly larger (ties share the best rank); NaN stays NaN."""
    return np.array([np.nan if np.isnan(v) else 1 + int((x[~np.isnan(x)] > v).sum()) for v in x])


def test_gate_scores_and_rankings_equal_the_hand_computation():
    model, _ = ta.model_and_hf()
    data = _data(2)
    bias = [(f"blocks.{l}.attn.hook_attn_scores", _bias_by_order) for l in range(N_LAYERS)]
    with model.hooks(fwd_hooks=bias):
        gate = find_gate(model, data, knockout_top=3, batch_size=2, progress=False)
        att = np.mean([_hand_scores(model, ex, [])[0] for ex in data], 0)
        share = att / att.sum()
        knocked = sorted(set(np.argsort(-share)[:3].tolist()) | {0, 17})  # top 3 by hand + the markers (boi, eoi)
        hand = [_hand_scores(model, ex, knocked) for ex in data]
    kl, tv = (np.mean([h[i] for h in hand], 0) for i in (1, 2))
    by_offset = gate.set_index("offset").sort_index()
    assert list(by_offset.index) == list(range(18)) and (by_offset.n == 2).all()
    assert list(by_offset.role) == ["boi"] + ["image"] * 15 + ["image_last", "eoi"]
    assert np.abs(by_offset.attention_share.values - share).max() <= 1e-6
    assert list(gate.offset) == ORDER == list(np.argsort(-share))  # sorted by share; the order made by the bias
    assert np.array_equal(by_offset.attention_rank.values, _rank_desc(share))
    assert sorted(by_offset.index[by_offset.knockout_kl.notna()]) == knocked == [0, 3, 11, 17]
    got_kl, got_tv = by_offset.knockout_kl.values, by_offset.knockout_tv.values
    # float32 log-softmax vs float64 by hand: measured 1.5e-7 (KL, values 3e-5 .. 1.3e-4) and 8e-9 (TV)
    assert np.abs(got_kl[knocked] - kl[knocked]).max() <= 1e-6 and np.abs(got_tv[knocked] - tv[knocked]).max() <= 1e-6
    assert np.diff(np.sort(kl[knocked])).min() > 1e-5  # 10x the tolerance apart: the ranks are well defined
    assert np.array_equal(by_offset.knockout_rank.values, _rank_desc(kl), equal_nan=True)


def test_find_gate_finds_a_gate_made_by_construction():
    """Every layer: text after EOI may read the image region only at offset GATE (an image token in the middle);
    the rest of the region can still reach it through the image tokens' own attention. So GATE gets all the
    attention share, knocking it out is the only knockout that changes the answer, and it ranks first in both.
    The image embeddings are scaled up, the gate key preferred and the logits sharpened so that the image
    matters (KL(p||q) and KL(q||p) then differ)."""
    model, _ = ta.model_and_hf()
    ex = _data(1)[0]
    gate_offset = 7

    def louder_image(t, hook):
        out = t.clone()
        out[:, BOI_POS + 1:EOI_POS] *= 30
        return out

    def only_the_gate(scores, hook):  # text after EOI: every other region key blocked, the gate preferred
        out = _block_keys(others, EOI_POS + 1)(scores, hook)
        out[:, :, EOI_POS + 1:, BOI_POS + gate_offset] += 8.0
        return out

    others = [p for p in range(BOI_POS, EOI_POS + 1) if p != BOI_POS + gate_offset]
    sharper = ("ln_final.hook_normalized", lambda t, hook: t * 20)  # logits x 20: a peaked next-token distribution
    crafted = [("hook_embed", louder_image), sharper] + [(f"blocks.{l}.attn.hook_attn_scores", only_the_gate)
                                                 for l in range(N_LAYERS)]
    gate_out = [(f"blocks.{l}.attn.hook_attn_scores", _block_keys([BOI_POS + gate_offset], EOI_POS + 1))
                for l in range(N_LAYERS)]
    with model.hooks(fwd_hooks=crafted):
        gate = find_gate(model, ex, progress=False).set_index("offset")
        p = forward_with_hooks(model, ex)[0, -1].double().log_softmax(-1)
        q = forward_with_hooks(model, ex, gate_out)[0, -1].double().log_softmax(-1)
    kl, kl_reverse = float((p.exp() * (p - q)).sum()), float((q.exp() * (q - p)).sum())
    rest = gate.drop(index=gate_offset)
    assert abs(gate.loc[gate_offset, "attention_share"] - 1.0) <= 1e-6 and rest.attention_share.max() <= 1e-6
    # measured: KL(clean || knocked) 3.035 (find_gate: 3.035 + 2e-7), KL(knocked || clean) 2.815; other offsets 0.0
    assert abs(gate.loc[gate_offset, "knockout_kl"] - kl) <= 1e-5 and abs(kl - kl_reverse) > 1e-3
    assert rest.knockout_kl.abs().max() <= 1e-8 and rest.knockout_tv.abs().max() <= 1e-8
    assert gate.loc[gate_offset, "attention_rank"] == 1 and gate.loc[gate_offset, "knockout_rank"] == 1
    assert (rest.attention_rank == 2).all() and (rest.knockout_rank == 2).all()  # ties share the best rank
    # by construction, with the gate knocked out too, text after EOI no longer depends on the pixels
    other = dict(ex, pixel_values=torch.randn_like(ex["pixel_values"]))
    for hooks, independent in ((crafted + gate_out, True), (crafted, False)):
        a, b = forward_with_hooks(model, ex, hooks), forward_with_hooks(model, other, hooks)
        diff = (a[0, EOI_POS + 1:] - b[0, EOI_POS + 1:]).abs().max().item()
        assert diff <= 1e-5 if independent else diff > 1e-3


def test_gate_on_a_mixed_length_batch_lines_offsets_up_by_region():
    """Left-padded batch of two lengths: offsets count from each item's BOI, so they still line up."""
    model, hf = ta.model_and_hf()
    data = [ta.example(hf, s, text_after=t) for s, t in ((0, 3), (1, 5))]
    gate = find_gate(model, data, knockout_top=0, batch_size=2, progress=False).set_index("offset").sort_index()
    att, kl = np.zeros(18), []
    for ex in data:
        boi, eoi = _region(ex)  # batch 1: no padding
        _, cache = model.run_with_cache(**ex, names_filter=lambda n: n.endswith("hook_pattern"))
        att += sum(cache[f"blocks.{l}.attn.hook_pattern"][0].sum(0)[eoi + 1:, boi:eoi + 1].mean(0).double().numpy()
                   for l in range(N_LAYERS)) / N_LAYERS / len(data)
        p = forward_with_hooks(model, ex)[0, -1].double().log_softmax(-1)
        hooks = [(f"blocks.{l}.attn.hook_attn_scores", _block_keys([eoi], eoi + 1)) for l in range(N_LAYERS)]
        q = forward_with_hooks(model, ex, hooks)[0, -1].double().log_softmax(-1)
        kl.append(float((p.exp() * (p - q)).sum()))
    assert np.abs(gate.attention_share.values - att / att.sum()).max() <= 1e-6
    assert sorted(gate.index[gate.knockout_kl.notna()]) == [0, 17]  # knockout_top=0: the markers only
    assert abs(gate.loc[17, "knockout_kl"] - np.mean(kl)) <= 1e-6 and gate.loc[17, "role"] == "eoi"
