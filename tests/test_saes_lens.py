"""Every SAELens SAE class spliced into a HookedVLM, at a text-LM hook and a vision-tower hook, and loaded
from a folder written by SAELens's own ``save_model``. Needs sae-lens (the min venv:
``/work/main/.venv-min/bin/python -m pytest tests/test_saes_lens.py``); skipped where it is absent."""

from __future__ import annotations

import warnings

import pytest
import torch

sae_lens = pytest.importorskip("sae_lens")

from sae_lens.saes.sae import SAEMetadata  # noqa: E402

from hooked_vlm.saes import load_sae  # noqa: E402
from tests.tiny_analysis import example, model_and_hf  # noqa: E402
from tests.tiny_sae import exact_weights  # noqa: E402

TOL = 1e-5  # max |logits - plain| for an exact-inverse SAE, or any SAE spliced with its error term
HOOKS = {"text": "blocks.1.hook_resid_post", "vision": "vision.blocks.0.hook_resid_post"}
CLASSES = ["standard", "topk", "jumprelu", "gated"]


def make_sae(kind: str, hook: str, d: int, exact: bool, seed: int = 0):
    """A SAELens SAE of ``kind``; ``exact``: weights whose decoder undoes the encoder (see tests/tiny_sae.py)."""
    torch.manual_seed(seed)
    meta = SAEMetadata(hook_name=hook)
    cls, cfg_cls, extra = {
        "standard": (sae_lens.StandardSAE, sae_lens.StandardSAEConfig, {}),
        "topk": (sae_lens.TopKSAE, sae_lens.TopKSAEConfig, {"k": 2 * d if exact else 8}),
        "jumprelu": (sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig, {}),
        "gated": (sae_lens.GatedSAE, sae_lens.GatedSAEConfig, {}),
    }[kind]
    sae = cls(cfg_cls(d_in=d, d_sae=2 * d, metadata=meta, **extra))
    with torch.no_grad():
        if exact:
            w_enc, w_dec = exact_weights(d, seed)
            sae.W_enc.copy_(w_enc)
            sae.W_dec.copy_(w_dec)
            for name, p in sae.named_parameters():
                if name not in ("W_enc", "W_dec"):  # b_enc, b_dec, threshold, b_gate, r_mag, b_mag: 0
                    p.zero_()
        else:
            for name, p in sae.named_parameters():
                if name.startswith("b_") or name == "threshold":
                    p.copy_(0.05 * torch.randn_like(p).abs() if name == "threshold" else 0.05 * torch.randn_like(p))
    return sae


@pytest.fixture(scope="module")
def setup():
    warnings.simplefilter("ignore", DeprecationWarning)
    model, hf = model_and_hf()
    inputs = example(hf, 4)
    with torch.no_grad():
        plain = model(**inputs)
        _, cache = model.run_with_cache(**inputs, names_filter=lambda n: n in HOOKS.values() or "ln2" in n)
    return model, inputs, plain, cache


def _width(model, where: str) -> int:
    return model.cfg.d_model if where == "text" else model.cfg.vision.tower.d_model


@pytest.mark.parametrize("where", list(HOOKS))
@pytest.mark.parametrize("kind", CLASSES)
def test_each_saelens_class_splices_exactly_and_with_its_error_term(setup, kind, where):
    model, inputs, plain, cache = setup
    hook, d = HOOKS[where], _width(model, where)
    with torch.no_grad():
        exact = model.run_with_saes(inputs, saes=[make_sae(kind, hook, d, exact=True)])
        lossy_sae = make_sae(kind, hook, d, exact=False)
        lossy = model.run_with_saes(inputs, saes=[lossy_sae])
        with_error, sc = model.run_with_cache_with_saes(inputs, saes=[lossy_sae], use_error_term=True)
        acts = lossy_sae.encode(cache[hook])  # SAELens's own encoder on the plain activation
    assert (exact - plain).abs().max() <= TOL
    assert (lossy - plain).abs().max() > 1e-3
    assert (with_error - plain).abs().max() <= TOL
    cached = sc[f"{hook}.hook_sae_acts_post"]
    assert cached.shape == (*cache[hook].shape[:-1], 2 * d) and (cached - acts).abs().max() <= 1e-5
    assert acts.abs().max() > 0
    assert lossy_sae.use_error_term is False  # our splice never flips the SAE's own flag


@pytest.mark.parametrize("kind", ["transcoder", "skip"])
def test_transcoders_read_one_hook_and_write_another(setup, kind):
    model, inputs, plain, cache = setup
    d = model.cfg.d_model
    src, dst = "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"
    cls, cfg_cls = ((sae_lens.Transcoder, sae_lens.TranscoderConfig) if kind == "transcoder"
                    else (sae_lens.SkipTranscoder, sae_lens.SkipTranscoderConfig))
    torch.manual_seed(0)
    tc = cls(cfg_cls(d_in=d, d_sae=64, d_out=d, apply_b_dec_to_input=False,
                     metadata=SAEMetadata(hook_name=src, hook_name_out=dst)))
    if kind == "skip":
        with torch.no_grad():
            tc.W_skip.copy_(0.1 * torch.randn_like(tc.W_skip))
    with torch.no_grad():
        out, sc = model.run_with_cache_with_saes(inputs, saes=[tc], names_filter=[dst, f"{dst}.hook_sae_acts_post"])
        with_error = model.run_with_saes(inputs, saes=[tc], use_error_term=True)
        x = cache[src]
        expected = tc.decode(tc.encode(x)) + (x @ tc.W_skip.T if kind == "skip" else 0)
    assert (sc[dst] - expected).abs().max() <= 1e-5  # the MLP's output replaced by the transcoder's
    assert (sc[f"{dst}.hook_sae_acts_post"] - tc.encode(x)).abs().max() <= 1e-5
    assert (out - plain).abs().max() > 1e-3
    assert (with_error - plain).abs().max() <= TOL
    assert not model.hook_dict[src].fwd_hooks  # the input-capture hook went with the transcoder


@pytest.mark.parametrize("kind", ["standard", "jumprelu", "topk"])
def test_a_folder_written_by_saelens_loads_through_saelens(setup, tmp_path, kind):
    model, inputs, _, _ = setup
    hook = HOOKS["text"]
    sae = make_sae(kind, hook, model.cfg.d_model, exact=False, seed=3)
    sae.save_model(tmp_path / "sae")
    loaded = load_sae(tmp_path / "sae")
    assert type(loaded) is type(sae) and loaded.cfg.metadata.hook_name == hook
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in sae.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model.run_with_saes(inputs, saes=[loaded], spans="image"),
                           model.run_with_saes(inputs, saes=[sae], spans="image"))
    with pytest.raises(FileNotFoundError, match="cfg.json"):
        load_sae(tmp_path)
    with pytest.raises(ValueError, match="sae_id="):
        load_sae("no-such-release")
