"""Tiny random Qwen3-VL checkpoints built offline (norms and biases perturbed), plus input batches.

LM: 3 Qwen3 layers, width 32, 4 heads of head_dim 16 (not 32 / 4), 2 kv heads, interleaved M-RoPE with
mrope_section [4, 2, 2] (pairs 1, 4 follow the height, 2, 5 the width, 0, 3, 6, 7 the time). Vision: 3 blocks, width
16, a 4 x 4 learned position table (resized to every grid), DeepStack from blocks 0 and 1 into LM layers 0 and 1.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from tests import tiny
from tests.tiny import BOS, EOS, PAD, VOCAB
from tests.tiny_qwen_idefics import IMAGE, VEND, VIDEO, VSTART, _perturb_and_save, qwen_batch

DEEPSTACK = [0, 1]
# item 0: one 4 x 6 image (6 LM tokens); item 1 (left-padded): a 4 x 4 and a 6 x 8 image (4 + 12 LM tokens)
GRIDS = [[(1, 4, 6)], [(1, 4, 4), (1, 6, 8)]]


def text_config(**overrides: Any) -> dict:
    cfg = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
               num_key_value_heads=2, head_dim=16, max_position_embeddings=512, rms_norm_eps=1e-5,
               pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
               rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2],
                                "mrope_interleaved": True})
    cfg.update(overrides)
    return cfg


def vision_config(**overrides: Any) -> dict:
    cfg = dict(depth=3, hidden_size=16, intermediate_size=24, num_heads=2, out_hidden_size=32, patch_size=2,
               spatial_merge_size=2, temporal_patch_size=2, in_channels=3, num_position_embeddings=16,
               deepstack_visual_indexes=list(DEEPSTACK))
    cfg.update(overrides)
    return cfg


def hf_config(text: dict | None = None, vision: dict | None = None, **top: Any) -> Any:
    from transformers import Qwen3VLConfig

    return Qwen3VLConfig(text_config=text or text_config(), vision_config=vision or vision_config(),
                         image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VSTART,
                         vision_end_token_id=VEND, **top)


def make_qwen3vl(folder: Path | None = None, seed: int = 0, **kwargs: Any) -> tuple[Path, Any]:
    from transformers import Qwen3VLForConditionalGeneration

    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(hf_config(**kwargs)).eval()
    return _perturb_and_save(model, "tiny_qwen3vl_", folder), model


def batch(grids: list[list[tuple[int, int, int]]] | None = None, pad_left: list[int] | None = None,
          seed: int = 0) -> dict:
    grids = GRIDS if grids is None else grids
    return qwen_batch(grids, pad_left if pad_left is not None else [0, 3][: len(grids)], seed=seed)


# ---------------------------------------------------------------- Qwen3-VL-MoE
MOE_LAYERS = (0, 2)  # layer 1 is in mlp_only_layers: a dense MLP between two MoE layers


def moe_text_config(**overrides: Any) -> dict:
    cfg = text_config(moe_intermediate_size=8, num_experts=4, num_experts_per_tok=2, decoder_sparse_step=1,
                      mlp_only_layers=[1], tie_word_embeddings=False)
    cfg.update(overrides)
    return cfg


def moe_hf_config(text: dict | None = None, vision: dict | None = None, **top: Any) -> Any:
    from transformers import Qwen3VLMoeConfig

    return Qwen3VLMoeConfig(text_config=text or moe_text_config(), vision_config=vision or vision_config(),
                            image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VSTART,
                            vision_end_token_id=VEND, **top)


def make_qwen3vl_moe(folder: Path | None = None, seed: int = 0, **kwargs: Any) -> tuple[Path, Any]:
    from transformers import Qwen3VLMoeForConditionalGeneration

    torch.manual_seed(seed)
    model = Qwen3VLMoeForConditionalGeneration(moe_hf_config(**kwargs)).eval()
    with torch.no_grad():  # routers start at zero (every expert tied): give them real preferences
        for layer in MOE_LAYERS:
            model.model.language_model.layers[layer].mlp.gate.weight.normal_(0.0, 0.5)
    return _perturb_and_save(model, "tiny_qwen3vl_moe_", folder), model


@functools.lru_cache(maxsize=None)
def qwen3vl(moe: bool = False) -> tiny.Built:
    """tests/test_parity.py's factory: the tiny Qwen3-VL (or -MoE), the padded batch of different image sizes, and
    an unpadded batch (2 items with one 4 x 6 image each)."""
    folder, hf = make_qwen3vl_moe() if moe else make_qwen3vl()
    return tiny.load(folder, hf, batch(), batch([[(1, 4, 6)], [(1, 4, 6)]], [0, 0], seed=1))
