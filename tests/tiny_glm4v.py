"""Tiny random GLM-4.1V checkpoints built offline (norms and biases perturbed), plus input batches.

LM: 3 GLM-4 layers (sandwich norms, fused gate_up), width 64, 4 heads of 16, 2 kv heads, RoPE on the first 8
channels of each head (partial_rotary_factor 0.5) on (even, odd) pairs, M-RoPE sections [2, 1, 1]. Vision: 3 blocks,
width 16 (2 heads), qkv bias, an 8 / 2 = 4 x 4 position table sampled at every grid, a 2 x 2 downsample conv to 64.
Inputs: the Qwen2-VL layout (``tests.tiny_qwen_idefics.qwen_batch``: <begin_of_image> image tokens <end_of_image>,
mm_token_type_ids), which is how HF's Glm4vProcessor lays out images.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from tests import tiny
from tests.tiny import BOS, EOS, PAD, VOCAB
from tests.tiny_qwen_idefics import IMAGE, VEND, VIDEO, VSTART, _perturb_and_save, qwen_batch

# item 0: one 4 x 6 image (6 LM tokens); item 1 (left-padded): a 4 x 4 and a 6 x 8 image (4 + 12 LM tokens)
GRIDS = [[(1, 4, 6)], [(1, 4, 4), (1, 6, 8)]]


def text_config(**overrides: Any) -> dict:
    cfg = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5, pad_token_id=PAD,
               rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                                "mrope_section": [2, 1, 1]})
    cfg.update(overrides)
    return cfg


def vision_config(**overrides: Any) -> dict:
    cfg = dict(depth=3, hidden_size=16, intermediate_size=24, num_heads=2, out_hidden_size=64, patch_size=2,
               image_size=8, spatial_merge_size=2, temporal_patch_size=2, in_channels=3, attention_bias=True)
    cfg.update(overrides)
    return cfg


def hf_config(text: dict | None = None, vision: dict | None = None, **top: Any) -> Any:
    from transformers import Glm4vConfig

    config = Glm4vConfig(text_config=text or text_config(), vision_config=vision or vision_config(),
                         image_token_id=IMAGE, video_token_id=VIDEO, image_start_token_id=VSTART,
                         image_end_token_id=VEND, video_start_token_id=VSTART + 4, video_end_token_id=VEND + 4, **top)
    config.text_config.bos_token_id, config.text_config.eos_token_id = BOS, EOS
    return config


def make_glm4v(folder: Path | None = None, seed: int = 0, **kwargs: Any) -> tuple[Path, Any]:
    from transformers import Glm4vForConditionalGeneration

    torch.manual_seed(seed)
    model = Glm4vForConditionalGeneration(hf_config(**kwargs)).eval()
    return _perturb_and_save(model, "tiny_glm4v_", folder), model


def batch(grids: list[list[tuple[int, int, int]]] | None = None, pad_left: list[int] | None = None,
          seed: int = 0) -> dict:
    grids = GRIDS if grids is None else grids
    return qwen_batch(grids, pad_left if pad_left is not None else [0, 3][: len(grids)], seed=seed)


@functools.lru_cache(maxsize=None)
def glm4v() -> tiny.Built:
    """tests/test_parity.py's factory: the tiny GLM-4.1V, the padded batch of different image sizes, and an unpadded
    batch (2 items with one 4 x 6 image each)."""
    folder, hf = make_glm4v()
    return tiny.load(folder, hf, batch(), batch([[(1, 4, 6)], [(1, 4, 6)]], [0, 0], seed=1))


# ---------------------------------------------------------------- GLM-4.5V (Glm4vMoe)
MOE_LAYERS = (1, 2)  # first_k_dense_replace=1: layer 0 keeps a dense MLP


def moe_text_config(**overrides: Any) -> dict:
    cfg = text_config(moe_intermediate_size=8, num_experts_per_tok=2, n_routed_experts=8, n_shared_experts=1,
                      n_group=2, topk_group=1, first_k_dense_replace=1, routed_scaling_factor=1.5,
                      norm_topk_prob=True, attention_bias=True, head_dim=16)
    cfg.update(overrides)
    return cfg


def make_glm4v_moe(folder: Path | None = None, seed: int = 0, text: dict | None = None, vision: dict | None = None,
                   **top: Any) -> tuple[Path, Any]:
    from transformers import Glm4vMoeConfig, Glm4vMoeForConditionalGeneration

    torch.manual_seed(seed)
    config = Glm4vMoeConfig(text_config=text or moe_text_config(), vision_config=vision or vision_config(),
                            image_token_id=IMAGE, video_token_id=VIDEO, image_start_token_id=VSTART,
                            image_end_token_id=VEND, video_start_token_id=VSTART + 4, video_end_token_id=VEND + 4, **top)
    config.text_config.bos_token_id, config.text_config.eos_token_id = BOS, EOS
    model = Glm4vMoeForConditionalGeneration(config).eval()
    with torch.no_grad():  # routers start at zero and the choice bias at zero: give both real values
        for layer in range(config.text_config.first_k_dense_replace, config.text_config.num_hidden_layers):
            gate = model.model.language_model.layers[layer].mlp.gate
            gate.weight.normal_(0.0, 0.5)
            gate.e_score_correction_bias.normal_(0.0, 0.3)
    return _perturb_and_save(model, "tiny_glm4v_moe_", folder), model


@functools.lru_cache(maxsize=None)
def glm4v_moe() -> tiny.Built:
    """The tiny GLM-4.5V (8 routed experts in 2 groups, 1 group kept, top-2, 1 shared expert), with glm4v()'s batches."""
    folder, hf = make_glm4v_moe()
    return tiny.load(folder, hf, batch(), batch([[(1, 4, 6)], [(1, 4, 6)]], [0, 0], seed=1))


# ---------------------------------------------------------------- GLM-4.6V (Glm46V: the GLM ViT + an LM by model_type)
def make_glm46v(folder: Path | None = None, seed: int = 0) -> tuple[Path, Any]:
    """GLM-4.6V with the GLM-4.5V MoE LM (``text_config.model_type="glm4v_moe_text"``, as the published checkpoint)."""
    from transformers import Glm46VConfig, Glm46VForConditionalGeneration

    torch.manual_seed(seed)
    config = Glm46VConfig(text_config=dict(moe_text_config(), model_type="glm4v_moe_text"),
                          vision_config=dict(vision_config(), model_type="glm4v_vision"), image_token_id=IMAGE,
                          video_token_id=VIDEO, image_start_token_id=VSTART, image_end_token_id=VEND,
                          video_start_token_id=VSTART + 4, video_end_token_id=VEND + 4)
    config.text_config.bos_token_id, config.text_config.eos_token_id = BOS, EOS
    model = Glm46VForConditionalGeneration(config).eval()
    with torch.no_grad():
        for layer in MOE_LAYERS:
            gate = model.model.language_model.layers[layer].mlp.gate
            gate.weight.normal_(0.0, 0.5)
            gate.e_score_correction_bias.normal_(0.0, 0.3)
    return _perturb_and_save(model, "tiny_glm46v_", folder), model


@functools.lru_cache(maxsize=None)
def glm46v() -> tiny.Built:
    folder, hf = make_glm46v()
    return tiny.load(folder, hf, batch(), batch([[(1, 4, 6)], [(1, 4, 6)]], [0, 0], seed=1))
