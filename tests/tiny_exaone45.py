"""A tiny random EXAONE 4.5 checkpoint built offline (norms and biases perturbed), plus input batches.

LM: EXAONE 4, 4 layers [sliding, full, sliding, full] (pattern 2), width 32, 4 heads of 8, 2 kv heads, sliding
window 8 (shorter than every prompt: the window acts), post-sublayer norms, q/k norms, NoPE on the full layers.
Vision: the Qwen2.5-VL ViT, 3 blocks of width 32 with 4 query heads and 2 key / value heads (GQA in the fused qkv),
windows of 2 x 2 merged cells (block 1 full), the patch merger to 32.
Inputs: Qwen2-VL's layout (HF's Exaone4_5_Processor is Qwen2VLProcessor's: <vision_start> <|image_pad|> x
t * h * w / 4 <vision_end>), without mm_token_type_ids (EXAONE 4.5's model takes none); positions are plain 1-D.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from tests import tiny
from tests.tiny import BOS, EOS, PAD, VOCAB
from tests.tiny_qwen_idefics import IMAGE, VEND, VIDEO, VSTART, _perturb_and_save, qwen_batch

WINDOW = 8
# item 0: one 4 x 6 image (6 LM tokens); item 1 (left-padded): a 4 x 4 and an 8 x 8 image (4 + 16 LM tokens)
GRIDS = [[(1, 4, 6)], [(1, 4, 4), (1, 8, 8)]]


def text_config(**overrides: Any) -> dict:
    cfg = dict(model_type="exaone4", vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
               num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512, rms_norm_eps=1e-5,
               sliding_window=WINDOW, sliding_window_pattern=2, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
               rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    cfg.update(overrides)
    return cfg


def vision_config(**overrides: Any) -> dict:
    cfg = dict(depth=3, hidden_size=32, intermediate_size=48, num_heads=4, num_key_value_heads=2, out_hidden_size=32,
               patch_size=2, spatial_merge_size=2, temporal_patch_size=2, in_channels=3, window_size=8,
               fullatt_block_indexes=[1])
    cfg.update(overrides)
    return cfg


def make_exaone45(folder: Path | None = None, seed: int = 0, text: dict | None = None, vision: dict | None = None,
                  **top: Any) -> tuple[Path, Any]:
    from transformers import Exaone4_5_Config, Exaone4_5_ForConditionalGeneration

    torch.manual_seed(seed)
    config = Exaone4_5_Config(text_config=text or text_config(), vision_config=vision or vision_config(),
                              image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VSTART,
                              vision_end_token_id=VEND, **top)  # the hub configs' marker ids (span roles boi / eoi)
    model = Exaone4_5_ForConditionalGeneration(config).eval()
    return _perturb_and_save(model, "tiny_exaone45_", folder), model


def batch(grids: list[list[tuple[int, int, int]]] | None = None, pad_left: list[int] | None = None,
          seed: int = 0, text_len: int = 12) -> dict:
    grids = GRIDS if grids is None else grids
    out = qwen_batch(grids, pad_left if pad_left is not None else [0, 3][: len(grids)], seed=seed, text_len=text_len)
    del out["mm_token_type_ids"]  # HF's Exaone4_5_Processor returns none and Exaone4_5_Model reads none
    return out


@functools.lru_cache(maxsize=None)
def exaone45() -> tiny.Built:
    """tests/test_parity.py's factory: the tiny EXAONE 4.5, the padded batch of different image sizes, and an unpadded
    batch (2 items with one 4 x 6 image each); every real prompt is longer than 2 x WINDOW."""
    folder, hf = make_exaone45()
    return tiny.load(folder, hf, batch(), batch([[(1, 4, 6)], [(1, 4, 6)]], [0, 0], seed=1))
