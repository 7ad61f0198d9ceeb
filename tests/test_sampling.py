"""Sampling in generate: do_sample, temperature, top_k, top_p and seed each do what HF's do.

The warpers are compared with HF's own (TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper) on the
same logits; the sampled frequencies are checked with a chi-square test against softmax(warped logits) at
p = 0.001 (seeded, so deterministic; each such test also shows that the ignored-argument alternative is
rejected, so it can fail). Model-level checks replicate one prompt over many batch rows: one forward, many
independent draws of the first new token, compared with HF's logits of that prompt.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from hooked_vlm import HookedVLM
from hooked_vlm.generation import _pick, warp_logits
from tests import tiny

Z_001 = 3.0902  # standard normal quantile of 1 - 0.001


def chi2_critical(df: int, z: float = Z_001) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile (df=5, p=0.001: 20.75; exact 20.52)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def chi2(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    """(statistic, degrees of freedom); bins expected below 5 are pooled into one bin."""
    n = counts.sum().item()
    expected = probs.double() * n
    big = expected >= 5
    obs = torch.cat([counts.double()[big], counts.double()[~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    if exp[-1] < 5:  # merge a too-small pooled bin into the smallest big one
        obs, exp = obs[:-1], exp[:-1]
        obs[exp.argmin()] += counts.double()[~big].sum()
        exp[exp.argmin()] += expected[~big].sum()
    if (obs[exp == 0] > 0).any():
        return math.inf, len(obs) - 1
    keep = exp > 0
    return float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()), int(keep.sum()) - 1


def hf_warp(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None):
    """HF's warpers in HF's generate order (generation/utils.py: temperature, top_k, top_p)."""
    ids = torch.zeros(logits.shape[0], 1, dtype=torch.long)
    if temperature != 1.0:
        logits = TemperatureLogitsWarper(temperature)(ids, logits)
    if top_k:
        logits = TopKLogitsWarper(top_k)(ids, logits)
    if top_p is not None and top_p < 1.0:
        logits = TopPLogitsWarper(top_p)(ids, logits)
    return logits


def _draw(logits: torch.Tensor, n: int, seed: int = 0, **kwargs) -> torch.Tensor:
    """Counts per token id of n draws of _pick from one row of logits."""
    g = torch.Generator().manual_seed(seed)
    picks = _pick(logits[None].expand(n, -1), True, kwargs.get("temperature", 1.0), kwargs.get("top_k"),
                  kwargs.get("top_p"), g)
    return torch.bincount(picks, minlength=logits.shape[-1])


# ---------------------------------------------------------------- the warpers equal HF's
SETTINGS = [dict(temperature=0.7), dict(top_k=5), dict(top_p=0.8), dict(top_p=0.0), dict(top_p=1.0), dict(top_k=0),
            dict(temperature=1.7, top_k=12, top_p=0.6), dict(temperature=0.5, top_p=0.95), dict(top_k=200, top_p=0.3)]


@pytest.mark.parametrize("kwargs", SETTINGS, ids=[str(s) for s in SETTINGS])
def test_warpers_equal_hf(kwargs):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 50, generator=g) * 2
    ours, ref = warp_logits(logits, **kwargs), hf_warp(logits, **kwargs)
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))
    finite = torch.isfinite(ref)
    assert (ours[finite] - ref[finite]).abs().max().item() <= 1e-6


def test_top_p_boundary_follows_hf():
    """Probabilities 1/2, 1/4, 1/8, 1/8 and top_p=0.75: HF keeps the smallest set reaching 0.75 ({0, 1}); a rule
    that drops a token only when the mass before it exceeds top_p keeps three."""
    logits = torch.tensor([[0.5, 0.25, 0.125, 0.125]]).log()
    assert torch.equal(torch.isinf(warp_logits(logits, top_p=0.75)), torch.isinf(hf_warp(logits, top_p=0.75)))
    assert torch.isfinite(warp_logits(logits, top_p=0.75)).sum().item() == 2


@pytest.mark.parametrize("top_p,nucleus", [(0.4, {0}), (0.75, {0, 1}), (0.85, {0, 1, 2}), (0.99, {0, 1, 2, 3})])
def test_top_p_nucleus_on_a_crafted_distribution(top_p, nucleus):
    """probs 0.5, 0.3, 0.15, 0.05 (ids shuffled): the smallest set of most probable ids with mass >= top_p."""
    perm = torch.tensor([2, 0, 3, 1])  # id perm[i] has the i-th largest probability
    probs = torch.zeros(4)
    probs[perm] = torch.tensor([0.5, 0.3, 0.15, 0.05])
    counts = _draw(probs.log(), 4000, top_p=top_p)
    kept = {int(perm[i]) for i in nucleus}
    assert set(counts.nonzero().flatten().tolist()) == kept
    renorm = torch.where(torch.isin(torch.arange(4), torch.tensor(sorted(kept))), probs, torch.zeros(4))
    stat, df = chi2(counts, renorm / renorm.sum())
    assert df == 0 or stat <= chi2_critical(df)


def test_top_k_only_top_ids_appear():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(40, generator=g)
    for k in (1, 3, 10):
        counts = _draw(logits, 3000, top_k=k)
        assert set(counts.nonzero().flatten().tolist()) == set(logits.topk(k).indices.tolist())
        stat, df = chi2(counts, logits.masked_fill(logits < logits.topk(k).values[-1], -math.inf).softmax(-1))
        assert df == 0 or stat <= chi2_critical(df)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_frequencies_follow_softmax_logits_over_t(temperature):
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -0.5, -1.5])
    counts = _draw(logits, 20000, seed=3, temperature=temperature)
    stat, df = chi2(counts, (logits / temperature).softmax(-1))
    assert df == 5 and stat <= chi2_critical(df)
    ignored, _ = chi2(counts, logits.softmax(-1))  # the test can tell: T=1 is rejected by far
    assert ignored > 10 * chi2_critical(df)


# ---------------------------------------------------------------- model level
N_ROWS = 2000


@functools.lru_cache(maxsize=None)
def _model():
    """(model, hf, a one-row text prompt, it replicated over N_ROWS rows, HF's last-position logits for it).
    Text only: the sampling path does not depend on images, and N_ROWS vision passes would be slow."""
    folder, hf = tiny.make_llava()
    one = {k: v for k, v in tiny.llava_batch(hf, [0], [0], text_len=6).items() if k != "pixel_values"}
    with torch.no_grad():
        hf_logits = hf(**one).logits[0, -1].float()
    rows = {k: v.expand(N_ROWS, *v.shape[1:]) for k, v in one.items()}
    return HookedVLM.from_pretrained(str(folder), processor=None), hf, one, rows, hf_logits


def _first_tokens(**kwargs) -> torch.Tensor:
    model, _, one, rows, _ = _model()
    out = model.generate(**rows, max_new_tokens=1, return_type="tokens", do_sample=True, **kwargs)
    return torch.bincount(out[:, -1], minlength=model.cfg.d_vocab)


def test_top_k_1_equals_greedy():
    model, hf, _, _, _ = _model()
    batch = tiny.llava_batch(hf, [1, 2, 0], [4, 0, 2])
    greedy = model.generate(**batch, max_new_tokens=8, return_type="tokens", stop_at_eos=False)
    for seed in range(2):
        sampled = model.generate(**batch, max_new_tokens=8, return_type="tokens", stop_at_eos=False, do_sample=True,
                                 top_k=1, temperature=1.3, seed=seed)
        assert torch.equal(sampled, greedy)
    plain = model.generate(**batch, max_new_tokens=8, return_type="tokens", stop_at_eos=False, do_sample=True, seed=0)
    assert not torch.equal(plain, greedy)  # sampling without top_k=1 is not greedy here


def test_model_top_k_and_top_p_sets():
    _, _, _, _, hf_logits = _model()
    counts = _first_tokens(top_k=4, seed=0)
    assert set(counts.nonzero().flatten().tolist()) == set(hf_logits.topk(4).indices.tolist())
    counts = _first_tokens(top_p=0.3, temperature=0.2, seed=1)
    nucleus = set(torch.isfinite(hf_warp(hf_logits[None], temperature=0.2, top_p=0.3)[0]).nonzero().flatten().tolist())
    seen = set(counts.nonzero().flatten().tolist())
    assert seen <= nucleus and len(seen) >= 0.9 * len(nucleus) and len(nucleus) < hf_logits.numel() // 2


def test_model_temperature_frequencies():
    """The tiny random model's logits are flat (std ~0.1); T=0.05 makes them peaked enough to tell apart."""
    _, _, _, _, hf_logits = _model()
    counts = _first_tokens(temperature=0.05, seed=2)
    stat, df = chi2(counts, (hf_logits / 0.05).softmax(-1))
    assert stat <= chi2_critical(df)
    ignored, df1 = chi2(counts, hf_logits.softmax(-1))
    assert ignored > 10 * chi2_critical(df1)


def test_seed_reproduces_and_leaves_the_global_rng_alone():
    model, hf, _, _, _ = _model()
    batch = tiny.llava_batch(hf, [1, 2], [2, 0])
    kwargs = dict(max_new_tokens=6, return_type="tokens", stop_at_eos=False, do_sample=True, top_p=0.9, temperature=0.8)
    state = torch.get_rng_state()
    a, b = model.generate(**batch, seed=5, **kwargs), model.generate(**batch, seed=5, **kwargs)
    assert torch.equal(torch.get_rng_state(), state)  # a seeded call draws from its own generator
    assert torch.equal(a, b)
    assert any(not torch.equal(a, model.generate(**batch, seed=s, **kwargs)) for s in (6, 7, 8))
    torch.manual_seed(11)  # seed=None: the global RNG
    c = model.generate(**batch, **kwargs)
    torch.manual_seed(11)
    assert torch.equal(c, model.generate(**batch, **kwargs))


def test_bad_sampling_arguments():
    model, hf, one, _, _ = _model()
    for bad, match in ((dict(temperature=0.0), "temperature must be a positive"), (dict(top_p=1.5), "top_p must be in"),
                       (dict(top_k=-1), "top_k must be a non-negative")):
        with pytest.raises(ValueError, match=match):
            model.generate(**one, max_new_tokens=1, do_sample=True, **bad)
    with pytest.warns(UserWarning, match="top_k=5 ignored: do_sample=False"):
        model.generate(**one, max_new_tokens=1, return_type="tokens", top_k=5)
