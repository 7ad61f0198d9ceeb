"""Parity with HuggingFace on tiny random models: logits, per-layer residuals, vision states, generate,
on BOTH attention paths (fast SDPA and explicit), and the two paths against each other.

Adding a family = one line in CASES: (id, factory) where factory() returns a cached tests.tiny.Built
(folder, hf, model, inputs, unpadded): ``inputs`` a padded batch (> 1 items) HF's forward accepts,
``unpadded`` a batch of equal-length items. Tolerances: fp32, 1e-4 absolute against HF on logits of
scale ~1 (random tiny models) and on every residual; 1e-5 between our two attention paths.
"""

from __future__ import annotations

import functools

import pytest
import torch

from hooked_vlm.components.attention import Attention
from hooked_vlm.components.rope import Rotary
from tests import tiny, tiny_native
from tests import tiny_cohere as tco
from tests import tiny_gemma3 as tg3
from tests import tiny_gemma4 as tg4
from tests import tiny_internvl as tiv
from tests import tiny_idefics2 as ti2
from tests import tiny_lfm2vl as tlv
from tests import tiny_llama4 as tl4
from tests import tiny_llava_like as tll
from tests import tiny_mllama as tml
from tests import tiny_molmo2 as tm2
from tests import tiny_next_pixtral as tnp
from tests import tiny_ovis2 as tov
from tests import tiny_paligemma as tpg
from tests import tiny_glm4v as tgl
from tests import tiny_exaone45 as tex
from tests import tiny_hunyuanvl as thy
from tests import tiny_qwen3vl as tq3
from tests import tiny_qwen35 as tq35
from tests import tiny_qwen_idefics as tqi
from tests import tiny_sam as tsam

ATOL = 1e-4  # ours vs HF
PATH_ATOL = 1e-5  # our fast (SDPA) path vs our explicit path
WINDOW = 8  # sliding window of the Mistral case: prompts hold 24-42 tokens
LONG = 25  # words after the images in the RoPE-scaling cases: positions up to 61 (yarn's original context: 16)
L = tiny.llama_text_config
ROPE_LINEAR = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
ROPE_YARN = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0, "original_max_position_embeddings": 16,
             "beta_fast": 32.0, "beta_slow": 1.0}  # d_head 8: frequency 0 extrapolated, 1-3 interpolated; mscale 1.14

CASES = [
    ("llava-llama-mha", tiny.llava),
    ("llava-llama-gqa", functools.partial(tiny.llava, text=L(num_key_value_heads=2))),
    ("llava-mistral", functools.partial(tiny.llava, text=L(model_type="mistral", num_key_value_heads=2, sliding_window=4096))),
    ("llava-mistral-window", functools.partial(tiny.llava, text=L(model_type="mistral", num_key_value_heads=2, sliding_window=WINDOW))),
    ("llava-qwen2-lm", functools.partial(tiny.llava, text=L(model_type="qwen2", num_key_value_heads=2))),
    ("llava-layers-list", functools.partial(tiny.llava, vision=tiny.clip_vision_config(num_hidden_layers=4), vision_feature_layer=[-2, -5])),
    ("llava-full-select", functools.partial(tiny.llava, vision_feature_select_strategy="full")),
    ("llava-right-padding", functools.partial(tiny.llava, pads=(0, 2, 0), right=True)),
    ("llava-tied", functools.partial(tiny.llava, text=L(tie_word_embeddings=True), tie_word_embeddings=True)),
    ("llava-llama3-rope-bias", functools.partial(tiny.llava, text=L(
        attention_bias=True, mlp_bias=True, initializer_range=0.05, rope_parameters={"rope_type": "llama3", "rope_theta":
        500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
        text_len=LONG)),
    # initializer_range 0.05 (logits of scale ~1.2): sharper attention, so unscaled RoPE is 2e-2 away, not 1e-3
    ("llava-llama-rope-linear", functools.partial(tiny.llava, text=L(rope_parameters=ROPE_LINEAR, initializer_range=0.05),
                                                  text_len=LONG)),
    ("llava-llama-rope-yarn", functools.partial(tiny.llava, text=L(rope_parameters=ROPE_YARN, initializer_range=0.05,
                                                                   max_position_embeddings=64), text_len=LONG)),
    ("qwen2-vl", functools.partial(tqi.qwen, "2")),
    ("qwen2.5-vl", functools.partial(tqi.qwen, "2.5")),
    ("idefics3", functools.partial(tqi.idefics, "idefics3")),
    ("smolvlm", functools.partial(tqi.idefics, "smolvlm")),
    ("next-mistral-clip", tnp.llava_next),
    ("onevision-qwen2-siglip", tnp.onevision),
    ("pixtral-llava", tnp.pixtral),
    ("mistral3-pixtral", tnp.mistral3),
    ("chameleon", tiny_native.chameleon),
    ("chameleon-swin-norm", functools.partial(tiny_native.chameleon, swin_norm=True)),
    ("emu3", tiny_native.emu3),
    ("janus", tiny_native.janus),
    ("gemma3", tg3.gemma3),
    ("qwen3-vl", tq3.qwen3vl),
    ("qwen3-vl-moe", functools.partial(tq3.qwen3vl, moe=True)),
    ("qwen3.5", tq35.qwen35),  # hybrid: Gated DeltaNet + gated attention layers
    ("qwen3.5-moe", functools.partial(tq35.qwen35, moe=True)),
    ("internvl-qwen2", tiv.internvl),
    ("internvl-qwen3", functools.partial(tiv.internvl, "qwen3")),
    ("idefics2", ti2.idefics2),
    ("lfm2-vl", tlv.lfm2vl),  # LFM2 hybrid LM: short-conv + attention layers; SigLIP2 NaFlex tiles
    ("paligemma2", tpg.paligemma),  # skipped below transformers 5.23 (tiny_paligemma.HF_IS_REFERENCE)
    ("aya-vision", tco.aya),
    ("aya-vision-cohere-lm", functools.partial(tco.aya, "cohere")),  # Aya Vision 32B's LM kind, with q/k norms
    ("cohere2-vision", tco.cohere2_vision),
    ("vipllava", tll.vipllava),
    ("granite-vision", tll.granite_vision),
    ("lighton-ocr", tll.lighton_ocr),
    ("next-video-clip", tll.llava_next_video),
    ("deepseek-vl", tll.deepseek_vl),
    ("deepseek-vl-hybrid", tsam.deepseek_vl_hybrid),  # SigLIP + SAM ViT (windowed rel-pos attention, padded windows)
    ("got-ocr2", tsam.got_ocr2),  # SAM ViT + conv downsample projector, Qwen2 LM; <img> / </img> markers
    ("mllama", tml.mllama),  # cross-attention layers 1, 3; a row with two images (the mask changes mid-row)
    ("gemma4-ple-kv-sharing", functools.partial(tg4.gemma4, "ple_kv")),  # text model; per-layer inputs, KV sharing
    ("gemma4-k-eq-v-moe", functools.partial(tg4.gemma4, "k_eq_v_moe")),  # text model; global v = k, 1 KV head; MoE beside MLP
    ("glm4v", tgl.glm4v),  # GLM-4 LM (sandwich norms, partial interleaved M-RoPE); GLM ViT + downsample merger
    ("glm4v-moe", tgl.glm4v_moe),  # GLM-4.5V: grouped sigmoid router with choice bias, ungated shared expert
    ("glm46v", tgl.glm46v),  # GLM-4.6V: the GLM ViT with the GLM-4.5V MoE LM, picked by text_config.model_type
    ("llama4", tl4.llama4_vlm),  # chunked (8) + NoPE layers, MoE; 2-D RoPE ViT, tiles + global tile; prompts > chunk
    ("ovis2", tov.ovis2),  # AIMv2 ViT; visual tokenizer softmax x embedding table; thumbnail + crop grid; Qwen2 LM
    ("exaone4.5", tex.exaone45),  # EXAONE 4 LM (post-sublayer norms, q/k norms, window 8 + NoPE globals); GQA Qwen2.5 ViT
    ("hunyuan-vl", thy.hunyuanvl),  # HunYuan LM (q/k norms after RoPE, 4-axis xdrope); grid-position ViT + conv merger
    ("molmo2", tm2.molmo2),  # attention-pooled patch windows added onto <im_patch>; one bidirectional image block
]
CASE_IDS = [c[0] for c in CASES]


def built(case_id: str) -> tiny.Built:
    return dict(CASES)[case_id]()  # the factories are cached: one build per case for the whole session


def _built(case_id):
    """(hf, model, inputs) of a case (the older interface; new code: ``built(case_id)``)."""
    b = built(case_id)
    return b.hf, b.model, b.inputs


def _batch(b: tiny.Built, batch: str) -> dict:
    return b.inputs if batch == "padded" else b.unpadded


# Each forward below runs once per (case, batch[, path]) and is shared by the tests that check it.
#: (case, batch) -> the input of HF's final LM norm in hf_run's forward: the last block's output
_HF_LAST_BLOCK: dict[tuple[str, str], torch.Tensor] = {}


@functools.lru_cache(maxsize=None)
def hf_run(case_id: str, batch: str = "padded"):
    """HF's forward (logits, hidden_states) on the case's padded or unpadded batch; the last block's output (HF's
    final-norm input, which hidden_states does not hold) is kept for :func:`hf_last_block`."""
    b = built(case_id)
    with tiny.final_norm_input(b.hf) as seen, torch.no_grad():
        out = b.hf(**_batch(b, batch), output_hidden_states=True)
    _HF_LAST_BLOCK[case_id, batch] = seen["x"]
    return out


def hf_last_block(case_id: str, batch: str = "padded") -> torch.Tensor:
    hf_run(case_id, batch)
    return _HF_LAST_BLOCK[case_id, batch]


@functools.lru_cache(maxsize=None)
def hf_generate(case_id: str, batch: str = "padded", n: int = 10) -> torch.Tensor:
    b = built(case_id)
    with torch.no_grad():
        return b.hf.generate(**_batch(b, batch), max_new_tokens=n, do_sample=False)


@functools.lru_cache(maxsize=None)
def our_generate(case_id: str, batch: str = "padded", n: int = 10, use_kv_cache: bool = True) -> torch.Tensor:
    b = built(case_id)
    return b.model.generate(**_batch(b, batch), max_new_tokens=n, return_type="tokens", use_kv_cache=use_kv_cache)


class AttentionPaths:
    """While active, counts calls of every Attention module's fast path (``fast_unmasked``: SDPA without a
    mask, its ``is_causal`` / no-mask branch) and of its explicit path."""

    def __enter__(self) -> dict:
        self.calls = calls = {"fast": 0, "fast_unmasked": 0, "explicit": 0}
        self.saved = fast, explicit = Attention._fast_attention, Attention._explicit_attention

        def counted_fast(module, q, k, v, mask, allowed):
            calls["fast"] += 1
            calls["fast_unmasked"] += allowed is None
            return fast(module, q, k, v, mask, allowed)

        def counted_explicit(module, *args):
            calls["explicit"] += 1
            return explicit(module, *args)

        Attention._fast_attention, Attention._explicit_attention = counted_fast, counted_explicit
        return calls

    def __exit__(self, *exc) -> None:
        Attention._fast_attention, Attention._explicit_attention = self.saved


def _every_residual(name: str) -> bool:
    """Residual streams of both towers (and the vision stream entering block 0) plus what connects them."""
    return name.endswith(("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_embed", "hook_image_embeds")) \
        or name in ("ln_final.hook_normalized", "vision.ln_pre.hook_normalized", "projector.hook_in", "projector.hook_out")


#: what each path hooks: "default" nothing (model(**inputs)); "fast" every residual, no hook_pattern /
#: hook_attn_scores (SDPA in every layer); "explicit" the same plus every hook_pattern (explicit in every layer)
PATHS = {"default": None, "fast": _every_residual,
         "explicit": lambda n: _every_residual(n) or n.endswith("hook_pattern")}


@functools.lru_cache(maxsize=None)
def ours_run(case_id: str, batch: str = "padded", path: str = "default"):
    """(logits, cache or None, attention-path call counts) of our model on one path."""
    b = built(case_id)
    with AttentionPaths() as calls, torch.no_grad():
        if path == "default":
            logits, cache = b.model(**_batch(b, batch)), None
        else:
            logits, cache = b.model.run_with_cache(**_batch(b, batch), names_filter=PATHS[path])
    return logits, cache, dict(calls)


def _real(inputs):
    return inputs["attention_mask"].bool()


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def _n_attention(model) -> int:
    """LM layers with attention (hybrid models: the others are linear / conv mixers, which have no attention path)."""
    return sum(hasattr(block, "attn") for block in model.blocks)


def _assert_path(calls: dict, path: str, n_attention: int) -> None:
    """Every one of the >= n_attention attention calls took ``path``."""
    took, other = ("explicit", "fast") if path == "explicit" else ("fast", "explicit")
    assert calls[took] >= n_attention and calls[other] == 0, calls


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_default_forward_logits_match_hf(case_id):
    """model(**inputs), no hooks at all: the SDPA path users get by default. (Unpadded batches, where SDPA runs
    without a mask, are compared with the explicit path in test_fast_and_explicit_paths_agree.)"""
    b = built(case_id)
    logits, _, calls = ours_run(case_id, "padded", "default")
    _assert_path(calls, "default", _n_attention(b.model))
    real = _real(b.inputs)
    assert torch.isfinite(logits).all()
    assert _max_diff(hf_run(case_id).logits[real], logits[real]) <= ATOL


@pytest.mark.parametrize("path", ["fast", "explicit"])
@pytest.mark.parametrize("case_id", CASE_IDS)
def test_logits_and_residuals_match_hf(case_id, path):
    b = built(case_id)
    model, inputs = b.model, b.inputs
    ref = hf_run(case_id)
    logits, cache, calls = ours_run(case_id, "padded", path)
    _assert_path(calls, path, _n_attention(model))
    real = _real(inputs)
    assert torch.isfinite(logits).all()
    assert _max_diff(ref.logits[real], logits[real]) <= ATOL
    n = model.cfg.n_layers
    assert len(ref.hidden_states) == n + 1
    assert _max_diff(ref.hidden_states[0][real], cache["hook_embed"][real]) <= ATOL
    for layer in range(n):  # HF's last hidden state is after the final norm: the last block's is its input
        hf_state = ref.hidden_states[layer + 1] if layer < n - 1 else hf_last_block(case_id)
        ours = cache[f"blocks.{layer}.hook_resid_post"]
        assert _max_diff(hf_state[real], ours[real]) <= ATOL, f"layer {layer}"
    assert _max_diff(ref.hidden_states[n][real], cache["ln_final.hook_normalized"][real]) <= ATOL


@functools.lru_cache(maxsize=None)
def _hf_clip_states(case_id: str):
    b = built(case_id)
    with torch.no_grad():
        return b.hf.model.vision_tower(b.inputs["pixel_values"], output_hidden_states=True).hidden_states


@pytest.mark.parametrize("path", ["fast", "explicit"])
@pytest.mark.parametrize("case_id", [c for c in CASE_IDS if c.startswith("llava")])
def test_vision_tower_states_match_hf(case_id, path):
    model = built(case_id).model
    ref = _hf_clip_states(case_id)
    _, cache, calls = ours_run(case_id, "padded", path)
    _assert_path(calls, path, model.cfg.n_layers + model.cfg.vision.tower.n_layers)
    assert _max_diff(ref[0], cache["vision.ln_pre.hook_normalized"]) <= ATOL
    for layer in range(model.cfg.vision.tower.n_layers):
        assert _max_diff(ref[layer + 1], cache[f"vision.blocks.{layer}.hook_resid_post"]) <= ATOL


@pytest.mark.parametrize("batch", ["padded", "unpadded"])
@pytest.mark.parametrize("case_id", CASE_IDS)
def test_fast_and_explicit_paths_agree(case_id, batch):
    """Logits and every residual of both towers, at every position, padding included. The unpadded batch runs
    SDPA without a mask (``is_causal`` in the LM) unless a sliding window shorter than the prompt needs one."""
    model = built(case_id).model
    fast_logits, fast, fast_calls = ours_run(case_id, batch, "fast")
    slow_logits, slow, slow_calls = ours_run(case_id, batch, "explicit")
    _assert_path(fast_calls, "fast", _n_attention(model))
    _assert_path(slow_calls, "explicit", fast_calls["fast"])  # every attention call took the explicit path
    if batch == "unpadded" and model.cfg.text.sliding_window is None:
        assert fast_calls["fast_unmasked"] >= _n_attention(model)
    assert _max_diff(fast_logits, slow_logits) <= PATH_ATOL
    names = sorted(fast.keys())
    has_vision_attention = any(n.startswith("vision.blocks.") for n in model.hook_dict)
    assert any(n.startswith("vision.blocks.") for n in names) == has_vision_attention
    for name in names:
        assert _max_diff(fast[name], slow[name]) <= PATH_ATOL, name


@pytest.mark.parametrize("case_id", [c for c in CASE_IDS if "right-padding" not in c])  # HF warns: generate needs left padding
def test_greedy_generate_matches_hf(case_id):
    assert torch.equal(hf_generate(case_id), our_generate(case_id))


@pytest.mark.parametrize("case_id, batch", [("llava-llama-gqa", "padded"), ("llava-mistral-window", "padded"),
                                            ("llava-mistral-window", "unpadded"), ("lfm2-vl", "padded"), ("vipllava", "padded"),
                                            ("granite-vision", "padded"), ("lighton-ocr", "padded"),
                                            ("next-video-clip", "padded"), ("deepseek-vl", "padded"),
                                            ("gemma4-ple-kv-sharing", "padded"), ("gemma4-k-eq-v-moe", "padded"),
                                            ("ovis2", "padded"),
                                            ("exaone4.5", "padded"), ("hunyuan-vl", "padded"),
                                            ("deepseek-vl-hybrid", "padded"), ("got-ocr2", "padded"),
                                            ("llama4", "padded"), ("molmo2", "padded")])
def test_generate_without_kv_cache_matches(case_id, batch):
    """With and without our KV cache, and HF's generate; the window case generates beyond its window.
    Without the cache every step reruns the whole prompt, so 6 tokens (greedy: the start of the 10)."""
    ref = hf_generate(case_id, batch)
    assert torch.equal(our_generate(case_id, batch), ref)
    no_cache = our_generate(case_id, batch, n=6, use_kv_cache=False)
    assert no_cache.shape[1] == min(ref.shape[1], _batch(built(case_id), batch)["input_ids"].shape[1] + 6)
    assert torch.equal(no_cache, ref[:, : no_cache.shape[1]])


# ---------------------------------------------------------------- the options above really act
def test_sliding_window_is_shorter_than_the_prompt_and_hf_applies_it(monkeypatch):
    """The window case would pass with the window ignored if the prompts were shorter than it (the old
    Mistral case: window 4096): here each real prompt is longer, HF's sdpa and eager agree with ours,
    and the same model without the window is far from HF."""
    b = built("llava-mistral-window")
    model, hf, inputs = b.model, b.hf, b.inputs
    assert model.cfg.text.sliding_window == WINDOW
    assert int(inputs["attention_mask"].sum(1).min()) > 2 * WINDOW
    assert int(b.unpadded["attention_mask"].sum(1).min()) > 2 * WINDOW
    real = _real(inputs)
    ref = hf_run("llava-mistral-window").logits
    assert hf.config.text_config._attn_implementation == "sdpa"
    try:
        hf.set_attn_implementation("eager")
        with torch.no_grad():
            eager = hf(**inputs).logits
    finally:
        hf.set_attn_implementation("sdpa")
    assert _max_diff(ref[real], eager[real]) <= ATOL
    monkeypatch.setattr(model.cfg.text, "sliding_window", None)
    with torch.no_grad():
        unwindowed = model(**inputs)
    assert _max_diff(ref[real], unwindowed[real]) > 10 * ATOL  # measured 0.13


@pytest.mark.parametrize("case_id", ["llava-llama-rope-linear", "llava-llama-rope-yarn", "llava-llama3-rope-bias"])
def test_rope_scaling_is_converted_and_changes_the_logits(case_id, monkeypatch):
    """The prompts are long enough (and attention sharp enough) that the scaling matters: the same model with
    unscaled frequencies is far from HF, so the parity tests above would catch a RoPE that ignored it."""
    b = built(case_id)
    model, inputs = b.model, b.inputs
    rope = dict(model.cfg.text.rope_parameters)
    assert rope == b.hf.config.text_config.rope_parameters and rope["rope_type"] in ("linear", "yarn", "llama3")
    plain = Rotary(model.cfg.text.d_head, {"rope_type": "default", "rope_theta": rope["rope_theta"]},
                   model.cfg.text.max_position_embeddings)
    monkeypatch.setattr(model, "rotary", plain)
    with torch.no_grad():
        unscaled = model(**inputs)
    real = _real(inputs)
    # measured: linear 2.3e-2, yarn 3.3e-2, llama3 5.2e-3 (llama3 with the default init and 5-word prompts: 1.5e-5 < ATOL)
    assert _max_diff(hf_run(case_id).logits[real], unscaled[real]) > 10 * ATOL


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_case_is_listed_under_its_architecture_in_the_coverage_table(case_id):
    """converters/coverage.py PARITY_CASES (the docs' coverage table) names each case under the architecture its
    model really has (the builds are the cached ones above)."""
    from converters.coverage import PARITY_CASES

    assert case_id in PARITY_CASES[built(case_id).model.cfg.architecture]
