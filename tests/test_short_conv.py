"""The short-convolution mixer (hooked_vlm/components/short_conv.py) against HF's Lfm2ShortConv, alone.

Whole-model parity (LFM2-VL) is tests/test_parity.py's CASES ("lfm2-vl"); here: one layer on the prompt, on cached
steps of one and of several tokens, with left padding (HF's numbers, and a padded row equal to the row alone -- also
with biases, where HF lets in_proj's bias of padded positions into the conv), the explicit tap-by-tap path equal to
the conv, and a conv knockout equal to a hand computation. Tolerances: fp32, 1e-6 (one layer, sums of 3 terms).
"""

from __future__ import annotations

import pytest
import torch

from hooked_vlm.analysis.conv_knockout import conv_knockout_hook
from hooked_vlm.components.masks import AttentionMask
from hooked_vlm.components.short_conv import ConvState, ShortConv
from hooked_vlm.config import ShortConvConfig, TowerConfig
from hooked_vlm.hook_points import RunState
from hooked_vlm.spans import TokenSpans

ATOL = 1e-6
D, KERNEL = 16, 3


def _pair(bias: bool, seed: int = 0):
    from transformers import Lfm2Config
    from transformers.models.lfm2.modeling_lfm2 import Lfm2ShortConv

    torch.manual_seed(seed)
    hc = Lfm2Config(hidden_size=D, num_hidden_layers=1, layer_types=["conv"], conv_L_cache=KERNEL, conv_bias=bias,
                    num_attention_heads=4, num_key_value_heads=2, vocab_size=50)
    hf = Lfm2ShortConv(hc, 0).eval()
    ours = ShortConv(TowerConfig(n_layers=1, d_model=D, n_heads=4, d_mlp=32, layer_types=("conv",),
                                 short_conv=ShortConvConfig(kernel=KERNEL, bias=bias)))
    ours.load_state_dict(hf.state_dict())
    return hc, hf, ours


def _mask(q_len: int, past: int = 0, padding: torch.Tensor | None = None) -> AttentionMask:
    return AttentionMask(causal=True, key_padding=padding, query_positions=torch.arange(past, past + q_len),
                         k_len=past + q_len)


@pytest.mark.parametrize("bias", [False, True])
@torch.no_grad()
def test_prompt_and_cached_steps_match_hf(bias):
    """Prompt of 5, then single tokens (HF's fused update path) and a chunk of 3 (HF's cache-continuation path)."""
    from transformers.cache_utils import DynamicCache

    hc, hf, ours = _pair(bias)
    x = torch.randn(2, 10, D)
    assert (hf(x) - ours(x, _mask(10))).abs().max().item() <= ATOL
    cache, state = DynamicCache(config=hc), ConvState()
    ref, out = [], []
    for lo, hi in ((0, 5), (5, 6), (6, 7), (7, 10)):
        ref.append(hf(x[:, lo:hi], past_key_values=cache))
        out.append(ours(x[:, lo:hi], _mask(hi - lo, lo), None, state))
    assert (torch.cat(ref, 1) - torch.cat(out, 1)).abs().max().item() <= ATOL
    assert state.length == 10 and state.window.shape == (2, D, KERNEL - 1)
    assert (torch.cat(out, 1) - ours(x, _mask(10))).abs().max().item() <= ATOL


@torch.no_grad()
def test_left_padding_matches_hf_and_the_row_alone():
    _, hf, ours = _pair(bias=False)
    x = torch.randn(2, 7, D)
    real = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1] * 7]).bool()
    padded = ours(x, _mask(7, padding=real))
    assert (hf(x, attention_mask=real.long())[real] - padded[real]).abs().max().item() <= ATOL
    alone = ours(x[:1, 2:], _mask(5))
    assert (alone[0] - padded[0, 2:]).abs().max().item() <= ATOL
    # the padding's content must not matter: garbage in the padded positions changes nothing at real ones
    x2 = x.clone()
    x2[0, :2] = 100.0
    assert (ours(x2, _mask(7, padding=real))[real] - padded[real]).abs().max().item() == 0.0


@torch.no_grad()
def test_with_biases_a_padded_row_equals_hf_on_the_row_alone():
    """conv_bias=True: HF zeroes only the in_proj input, so in_proj's bias at padded positions (b * h = bias_b *
    bias_h) enters the first real positions' conv; we zero b * h too, so a padded row equals the row alone (HF's too)."""
    _, hf, ours = _pair(bias=True)
    x = torch.randn(1, 7, D)
    real = torch.tensor([[0, 0, 1, 1, 1, 1, 1]]).bool()
    padded = ours(x, _mask(7, padding=real))[0, 2:]
    assert (hf(x[:, 2:])[0] - padded).abs().max().item() <= ATOL
    assert (hf(x, attention_mask=real.long())[0, 2:] - padded).abs().max().item() > 100 * ATOL  # HF's leak is real


def _with_spans(module: ShortConv, q_pos: torch.Tensor, n: int, batch: int = 1) -> None:
    run = RunState()
    run.spans = TokenSpans(masks={"pad": torch.zeros(batch, n, dtype=torch.bool)}, grid=torch.full((batch, n, 4), -1))
    run.query_positions = q_pos
    for hp in (module.hook_tap_mask, module.hook_conv_out, module.hook_b, module.hook_c, module.hook_x):
        hp.run = run


@torch.no_grad()
def test_explicit_taps_equal_the_conv_and_a_knockout_equals_the_hand_computation():
    """Knock out source 3 -> destination 4 (one tap back) and source 1 -> destination 4 (out of the window: nothing to
    remove). By hand: conv_out[4] loses w[:, kernel - 2] * (b * h)[3]; every other position is unchanged."""
    _, _, ours = _pair(bias=True)
    x = torch.randn(1, 6, D)
    _with_spans(ours, torch.arange(6), 6)
    store = {}
    for name in ("hook_b", "hook_x", "hook_conv_out"):
        getattr(ours, name).add_hook(lambda t, hook, name=name: store.__setitem__(name, t.clone()))
    clean = ours(x, _mask(6))
    clean_conv = store["hook_conv_out"]
    ours.hook_tap_mask.add_hook(lambda t, hook: t)  # the explicit path, nothing removed
    assert (ours(x, _mask(6)) - clean).abs().max().item() <= ATOL
    ours.hook_tap_mask.remove_hooks()
    src, dst = torch.zeros(1, 6, dtype=torch.bool), torch.zeros(1, 6, dtype=torch.bool)
    src[0, [1, 3]], dst[0, 4] = True, True
    ours.hook_tap_mask.add_hook(conv_knockout_hook(src, dst, KERNEL))
    knocked = ours(x, _mask(6))
    ours.hook_tap_mask.remove_hooks()
    expected = clean_conv.clone()
    bh = store["hook_b"] * store["hook_x"]
    expected[0, 4] -= ours.conv.weight[:, 0, KERNEL - 2] * bh[0, 3]
    assert (store["hook_conv_out"] - expected).abs().max().item() <= ATOL
    assert (store["hook_conv_out"] - clean_conv).abs().max().item() > 1e-3  # the knockout removed something
    changed = (knocked - clean).abs().amax(-1)[0]
    assert changed[4] > 1e-3 and changed[[0, 1, 2, 3, 5]].max().item() <= ATOL


@torch.no_grad()
def test_knockout_reaches_into_the_cached_window():
    """Generating position 5 with the cache: a knockout of source 4 -> destination 5 removes the term read from the
    state's window, exactly as the same knockout does without the cache."""
    _, _, ours = _pair(bias=False)
    x = torch.randn(1, 6, D)
    src, dst = torch.zeros(1, 6, dtype=torch.bool), torch.zeros(1, 6, dtype=torch.bool)
    src[0, 4], dst[0, 5] = True, True
    ours.hook_tap_mask.add_hook(conv_knockout_hook(src, dst, KERNEL))
    _with_spans(ours, torch.arange(6), 6)
    full = ours(x, _mask(6))
    state = ConvState()
    _with_spans(ours, torch.arange(5), 6)
    ours(x[:, :5], _mask(5), None, state)
    _with_spans(ours, torch.tensor([5]), 6)
    step = ours(x[:, 5:], _mask(1, 5), None, state)
    ours.hook_tap_mask.remove_hooks()
    assert (step[0, 0] - full[0, 5]).abs().max().item() <= ATOL
    assert (step[0, 0] - ours(x, _mask(6))[0, 5]).abs().max().item() > 1e-3
