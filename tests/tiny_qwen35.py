"""Tiny random Qwen3.5 checkpoints (dense and MoE) built offline (norms and biases perturbed), plus input batches.

LM: 4 layers, kinds linear / full / linear / linear attention (HF's ``layer_types``), width 32. Full attention: 4
heads of head_dim 32 (not 32 / 4), 2 kv heads, gated output, RMS q/k norms, partial rotary 0.25 (rotary_dim 8) with
interleaved M-RoPE mrope_section [2, 1, 1]. Gated DeltaNet: 2 key heads of 8, 4 value heads of 8 (grouped), conv
kernel 4. MoE: 4 experts, top 2, a gated shared expert in every layer. Vision: Qwen3-VL's tower without DeepStack
(3 blocks, width 16, a 4 x 4 learned position table).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from tests import tiny
from tests.tiny import BOS, EOS, PAD, VOCAB
from tests.tiny_qwen3vl import batch
from tests.tiny_qwen_idefics import IMAGE, VEND, VIDEO, VSTART, _perturb_and_save

LAYER_TYPES = ["linear_attention", "full_attention", "linear_attention", "linear_attention"]


def text_config(moe: bool = False, **overrides: Any) -> dict:
    cfg = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=len(LAYER_TYPES),
               num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=512,
               rms_norm_eps=1e-5, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, layer_types=list(LAYER_TYPES),
               linear_conv_kernel_dim=4, linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2,
               linear_num_value_heads=4,
               rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1],
                                "mrope_interleaved": True, "partial_rotary_factor": 0.25})
    if moe:
        cfg.pop("intermediate_size")
        cfg.update(moe_intermediate_size=8, shared_expert_intermediate_size=12, num_experts=4, num_experts_per_tok=2)
    cfg.update(overrides)
    return cfg


def vision_config(**overrides: Any) -> dict:
    cfg = dict(depth=3, hidden_size=16, intermediate_size=24, num_heads=2, out_hidden_size=32, patch_size=2,
               spatial_merge_size=2, temporal_patch_size=2, in_channels=3, num_position_embeddings=16)
    cfg.update(overrides)
    return cfg


def hf_config(moe: bool = False, text: dict | None = None, vision: dict | None = None, **top: Any) -> Any:
    from transformers import Qwen3_5Config, Qwen3_5MoeConfig

    cls = Qwen3_5MoeConfig if moe else Qwen3_5Config
    return cls(text_config=text or text_config(moe), vision_config=vision or vision_config(), image_token_id=IMAGE,
               video_token_id=VIDEO, vision_start_token_id=VSTART, vision_end_token_id=VEND, **top)


def make_qwen35(moe: bool = False, folder: Path | None = None, seed: int = 0, **kwargs: Any) -> tuple[Path, Any]:
    from transformers import Qwen3_5ForConditionalGeneration, Qwen3_5MoeForConditionalGeneration

    torch.manual_seed(seed)
    cls = Qwen3_5MoeForConditionalGeneration if moe else Qwen3_5ForConditionalGeneration
    model = cls(hf_config(moe, **kwargs)).eval()
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            if moe:  # routers start at zero (every expert tied): give them real preferences
                layer.mlp.gate.weight.normal_(0.0, 0.5)
            for name, p in layer.named_parameters():  # q/k norms and the (1 + w) norms start at 0: perturb more
                if name.endswith("norm.weight"):
                    p.add_(torch.randn_like(p) * 0.2)
    return _perturb_and_save(model, "tiny_qwen35_moe_" if moe else "tiny_qwen35_", folder), model


@functools.lru_cache(maxsize=None)
def qwen35(moe: bool = False) -> tiny.Built:
    """tests/test_parity.py's factory: the tiny Qwen3.5 (or -MoE), the padded batch of different image sizes (item 1
    left-padded by 3), and an unpadded batch (2 items with one 4 x 6 image each)."""
    folder, hf = make_qwen35(moe)
    return tiny.load(folder, hf, batch(), batch([[(1, 4, 6)], [(1, 4, 6)]], [0, 0], seed=1))
