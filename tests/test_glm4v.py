"""GLM-4.1V (Glm4vForConditionalGeneration) against HF on the tiny random checkpoint of tests/tiny_glm4v.py, beyond
tests/test_parity.py's CASES line: every vision layer, the downsample and merger, the last LM block before the final
norm, M-RoPE positions and rotary tables, greedy generation without the KV cache, refusals.

Tolerances: fp32, 1e-4 absolute (as tests/test_parity.py), 1e-6 where the same arithmetic runs in another order.
The batch: two items, 3 left pads on item 1, three images of different sizes (4 x 6, 4 x 4, 6 x 8 patches).
"""

from __future__ import annotations

import copy

import pytest
import torch

from converters import get_converter
from converters.base import UnsupportedConfigError
from tests import tiny_glm4v as tg
from tests.tiny import max_abs_diff as _max, pattern_hooks as _pattern_hooks, real_positions as _real
from tests.tiny_qwen_idefics import VIDEO

ATOL = 1e-4


def _built():
    b = tg.glm4v()
    return b.hf, b.model, b.inputs


@pytest.mark.parametrize("path", ["fast", "explicit"])
def test_every_vision_layer_downsample_and_merger_match_hf(path):
    hf, model, inputs = _built()
    grid = inputs["image_grid_thw"]
    hooks = _pattern_hooks(model) if path == "explicit" else []
    store = {}

    def keep(t, hook):
        store[hook.name] = t.detach().clone()
        return t

    names = ["vision.hook_embed", "projector.hook_in", "projector.hook_downsampled", "projector.hook_out"]
    names += [f"vision.blocks.{l}.hook_resid_post" for l in range(model.cfg.vision.tower.n_layers)]
    blocks_out = []  # HF's hidden_states end with the downsampled state, not the last block's: hook every block
    handles = [blk.register_forward_hook(lambda m, a, out: blocks_out.append(out)) for blk in hf.model.visual.blocks]
    try:
        with torch.no_grad():
            ref = hf.model.visual(inputs["pixel_values"], grid_thw=grid, output_hidden_states=True)
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad():
        model.run_with_hooks(**inputs, fwd_hooks=hooks + [(n, keep) for n in names])
    n_layers = model.cfg.vision.tower.n_layers
    assert len(blocks_out) == n_layers
    assert _max(ref.hidden_states[0], store["vision.hook_embed"][0]) <= ATOL  # post-conv norm + sampled positions
    for layer in range(n_layers):
        assert _max(blocks_out[layer], store[f"vision.blocks.{layer}.hook_resid_post"][0]) <= ATOL, layer
    assert _max(ref.last_hidden_state, store["projector.hook_downsampled"][0]) <= ATOL
    assert _max(ref.pooler_output, store["projector.hook_out"][0]) <= ATOL


def test_position_table_sampling_equals_hf_embeddings():
    """Our bicubic grid_sample at each patch centre == HF's Glm4vVisionEmbeddings, for odd and video-like grids."""
    from transformers.vision_utils import get_vision_position_ids

    hf, model, _ = _built()
    grid = torch.tensor([[1, 4, 6], [1, 2, 2], [2, 6, 10], [1, 8, 4]])
    n = int(grid.prod(-1).sum())
    pos = get_vision_position_ids(grid, 2)
    lengths = grid.prod(-1)
    with torch.no_grad():
        ref = hf.model.visual.embeddings(torch.zeros(n, model.cfg.vision.tower.d_model), lengths, grid,
                                         pos[:, 0], pos[:, 1])
        assert _max(ref, model.vision.sampled_pos_embed(grid)) <= 1e-6


def test_last_block_before_the_final_norm_matches_hf():
    """HF's hidden_states end after the final norm; the last block's output is read with a forward hook."""
    hf, model, inputs = _built()
    real = _real(inputs)
    seen = []
    handle = hf.model.language_model.layers[-1].register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        with torch.no_grad():
            hf(**inputs)
    finally:
        handle.remove()
    _, cache = model.run_with_cache(**inputs, names_filter=lambda n: n.endswith("hook_resid_post"))
    last = seen[0][0] if isinstance(seen[0], tuple) else seen[0]
    assert _max(last, cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"], real) <= ATOL


def test_mrope_positions_and_partial_interleaved_rotary_match_hf():
    from hooked_vlm.model import KVCache
    from hooked_vlm.positions import mrope_positions
    from transformers.models.glm4v.modeling_glm4v import Glm4vTextRotaryEmbedding

    hf, model, inputs = _built()
    ref, ref_deltas = hf.model.get_rope_index(inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
                                              image_grid_thw=inputs["image_grid_thw"],
                                              attention_mask=inputs["attention_mask"])
    cache = KVCache(model.cfg.n_layers)
    ours = mrope_positions(model, inputs["input_ids"], inputs["attention_mask"], None, cache,
                           {"image_grid_thw": inputs["image_grid_thw"]})
    assert torch.equal(ours[:, inputs["attention_mask"].bool()], ref[:, inputs["attention_mask"].bool()])
    assert torch.equal(cache.extra["rope_deltas"], ref_deltas)
    assert (ours[1] != ours[2]).any(), "the batch must exercise 2-D image positions"
    positions = torch.randint(0, 50, (3, 2, 7))
    ref_cos, ref_sin = Glm4vTextRotaryEmbedding(hf.config.text_config)(torch.zeros(1), positions)
    cos, sin = model.rotary(positions, torch.float32)
    assert cos.shape[-1] == model.cfg.text.rotary_dim == 8
    assert _max(ref_cos, cos[:, :, 0]) <= 1e-6 and _max(ref_sin, sin[:, :, 0]) <= 1e-6


@pytest.mark.parametrize("use_kv_cache", [True, False])
def test_greedy_generate_matches_hf(use_kv_cache):
    hf, model, inputs = _built()
    with torch.no_grad():
        ref = hf.generate(**inputs, max_new_tokens=10, do_sample=False)
    ours = model.generate(**inputs, max_new_tokens=10, return_type="tokens", use_kv_cache=use_kv_cache)
    assert ref.shape[1] == inputs["input_ids"].shape[1] + 10
    assert torch.equal(ref, ours)


def test_videos_are_refused_by_name():
    _, model, inputs = _built()
    with pytest.raises(ValueError, match="video inputs are not supported for GLM-4.xV"):
        model(**inputs, pixel_values_videos=torch.zeros(4, 24), video_grid_thw=torch.tensor([[1, 2, 2]]))
    ids = inputs["input_ids"].clone()
    ids[0, -1] = VIDEO
    with pytest.raises(ValueError, match="video"):
        model(**dict(inputs, input_ids=ids))


def test_refusals_name_the_field():
    hf, _, _ = _built()
    convert = get_converter("Glm4vForConditionalGeneration").make_config
    bad = copy.deepcopy(hf.config)
    bad.text_config.rope_parameters = dict(bad.text_config.rope_parameters, mrope_section=[2, 2, 2])
    with pytest.raises(UnsupportedConfigError, match="mrope_section"):
        convert(bad)
    bad = copy.deepcopy(hf.config)
    bad.vision_config.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
    with pytest.raises(UnsupportedConfigError, match="rope_type"):
        convert(bad)
    bad = copy.deepcopy(hf.config)
    bad.text_config.model_type = "glm4_unknown"
    with pytest.raises(UnsupportedConfigError, match="glm4_unknown"):
        convert(bad)


# ---------------------------------------------------------------- GLM-4.5V (Glm4vMoe): the grouped sigmoid router
def _moe():
    b = tg.glm4v_moe()
    return b.hf, b.model, b.inputs


def test_sigmoid_grouped_router_equals_hf_and_its_groups_and_bias_matter():
    """Our router == HF's Glm4vMoeTextTopkRouter on random states (same experts, same weights); on these states the
    group limit and the choice bias each change some token's experts, so neither is a no-op."""
    from hooked_vlm.components.moe_router import sigmoid_grouped_topk

    hf, model, _ = _moe()
    for layer in tg.MOE_LAYERS:
        gate, ours = hf.model.language_model.layers[layer].mlp.gate, model.blocks[layer].mlp
        x = torch.randn(64, model.cfg.d_model, generator=torch.Generator().manual_seed(layer))
        with torch.no_grad():
            logits, ref_w, ref_i = gate(x)
            idx, w = ours.route(x[None])
        idx, w = idx[0], w[0]
        order, ref_order = idx.sort(-1), ref_i.sort(-1)
        assert torch.equal(order.values, ref_order.values)
        assert _max(w.gather(-1, order.indices), ref_w.gather(-1, ref_order.indices)) <= 1e-6
        cfg = model.cfg.text
        bias = ours.e_score_correction_bias.detach()
        ungrouped, _ = sigmoid_grouped_topk(logits, bias, cfg.n_experts_per_tok, 1, 1, True, 1.0)
        unbiased, _ = sigmoid_grouped_topk(logits, torch.zeros_like(bias), cfg.n_experts_per_tok, cfg.moe_n_group,
                                           cfg.moe_topk_group, True, 1.0)
        assert not torch.equal(ungrouped.sort(-1).values, order.values)
        assert not torch.equal(unbiased.sort(-1).values, order.values)


def test_moe_last_block_and_generation_without_kv_cache_match_hf():
    hf, model, inputs = _moe()
    real = _real(inputs)
    seen = []
    handle = hf.model.language_model.layers[-1].register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        with torch.no_grad():
            ref = hf.generate(**inputs, max_new_tokens=10, do_sample=False)
    finally:
        handle.remove()
    _, cache = model.run_with_cache(**inputs, names_filter=lambda n: n.endswith("hook_resid_post"))
    last = seen[0][0] if isinstance(seen[0], tuple) else seen[0]
    assert _max(last, cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"], real) <= ATOL
    ours = model.generate(**inputs, max_new_tokens=10, return_type="tokens", use_kv_cache=False)
    assert torch.equal(ref, ours)


def test_moe_refusals_name_the_field():
    hf, _, _ = _moe()
    convert = get_converter("Glm4vMoeForConditionalGeneration").make_config
    bad = copy.deepcopy(hf.config)
    bad.text_config.n_group = 3  # 8 experts do not split into 3 groups
    with pytest.raises(UnsupportedConfigError, match="n_group"):
        convert(bad)


def test_real_glm45v_config_counts_the_checkpoints_parameters():
    """zai-org/GLM-4.5V (tests/real_configs, an AutoConfig print): our parameters number exactly the real checkpoint's
    107,710,933,120 tensor elements (the 45 float32 e_score_correction_bias vectors included), as its weight report
    states; the structural test in tests/test_real_configs.py maps every tensor name and shape."""
    from pathlib import Path

    from tests.test_real_configs import structure

    s = structure(Path(__file__).parent / "real_configs" / "zai-org__GLM-4.5V.json")
    assert s.n_parameters == 107_710_933_120


def test_glm41v_text_config_accepts_attention_bias_true_and_refuses_false():
    hf, _, _ = _built()
    convert = get_converter("Glm4vForConditionalGeneration").make_config
    ok = copy.deepcopy(hf.config)
    ok.text_config.attention_bias = True  # what the hub's GLM-4.1V config says (HF always has the biases)
    assert convert(ok).text.attn_bias
    bad = copy.deepcopy(hf.config)
    bad.text_config.attention_bias = False
    with pytest.raises(UnsupportedConfigError, match="attention_bias"):
        convert(bad)


def test_processor_layout_runs_end_to_end_and_matches_hf():
    """GLM-4V's torchvision-free image processor (Glm4vImageProcessorPil, sized for the tiny tower) behind the
    converter's QwenVLInputs (``<|image|>`` expanded to t * h * w / merge**2 copies, as HF's Glm4vProcessor): two
    images of different aspect ratios give the same logits here and in HF."""
    import numpy as np
    from PIL import Image
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

    from converters._qwen_inputs import QwenVLInputs
    from tests.tiny_qwen_idefics import IMAGE, VEND, VSTART

    vocab = {f"w{i}": i for i in range(100)}
    specials = {"<|image|>": IMAGE, "<|begin_of_image|>": VSTART, "<|end_of_image|>": VEND}
    tok = Tokenizer(models.WordLevel({**vocab, **specials}, unk_token="w3"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w3", pad_token="w0",
                                        additional_special_tokens=list(specials))
    images = Image.new("RGB", (24, 16), (200, 30, 90)), Image.fromarray(
        np.random.default_rng(0).integers(0, 255, (20, 12, 3), dtype=np.uint8))
    processor = QwenVLInputs(tokenizer, Glm4vImageProcessorPil(patch_size=2, temporal_patch_size=2, merge_size=2,
                                                               size={"shortest_edge": 16, "longest_edge": 4096}),
                             image_token="<|image|>")
    text = "w1 w5 <|begin_of_image|> <|image|> <|end_of_image|> w7 <|begin_of_image|> <|image|> <|end_of_image|> w9"
    inputs = processor(images=list(images), text=[text])
    hf, model, _ = _built()
    grid = inputs["image_grid_thw"]
    assert grid[:, 1:].tolist() == [[8, 12], [10, 6]]
    assert int((inputs["input_ids"] == IMAGE).sum()) == int(grid.prod(-1).sum()) // 4
    with torch.no_grad():
        assert _max(hf(**inputs).logits, model(**inputs)) <= ATOL
