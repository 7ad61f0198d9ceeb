"""A tiny random HunYuanVL checkpoint built offline (norms, biases and the merger's learned embeddings perturbed),
plus input batches.

LM: HunYuan dense, 3 layers, width 32, 4 heads of 8, 2 kv heads, biases on q/k/v/o, q/k RMS norms after RoPE, 4-axis
multimodal RoPE (xdrope_section [1, 1, 1, 1]: (sequence, column, row, image index)) with ntk_alpha 2, tied embeddings.
Vision: 2 blocks of width 16 (2 heads), patch 2, a 4 x 4 position grid (max_image_size 8) resized to every image, the
conv merger (2 x 2) to 32 with row breaks and begin / end embeddings.
Inputs: HF's HunYuanVLProcessor layout: <im_start> + image token x (1 + (h / 2) * (w / 2 + 1) + 1) + <im_end>, with
mm_token_type_ids (tests/test_hunyuanvl.py checks the stand-in processor against HF's).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from tests import tiny
from tests.tiny import BOS, EOS, PAD, VOCAB, pad_rows
from tests.tiny_qwen_idefics import IMAGE, VEND, VSTART, _perturb_and_save

NEWLINE = 104
# item 0: one 4 x 6 image (10 LM tokens); item 1 (left-padded): a 4 x 4 and a 6 x 8 image (8 + 17 LM tokens)
GRIDS = [[(1, 4, 6)], [(1, 4, 4), (1, 6, 8)]]


def text_config(**overrides: Any) -> dict:
    cfg = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
               num_key_value_heads=2, head_dim=8, attention_bias=True, max_position_embeddings=512, rms_norm_eps=1e-5,
               pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
               rope_parameters={"rope_type": "xdrope", "rope_theta": 10000.0, "alpha": 2.0, "factor": 1.0,
                                "xdrope_section": [1, 1, 1, 1]})
    cfg.update(overrides)
    return cfg


def vision_config(**overrides: Any) -> dict:
    cfg = dict(hidden_size=16, intermediate_size=24, num_attention_heads=2, num_hidden_layers=2, patch_size=2,
               max_image_size=8, spatial_merge_size=2, rms_norm_eps=1e-5)
    cfg.update(overrides)
    return cfg


def make_hunyuanvl(folder: Path | None = None, seed: int = 0, text: dict | None = None, vision: dict | None = None,
                   **top: Any) -> tuple[Path, Any]:
    from transformers import HunYuanVLConfig, HunYuanVLForConditionalGeneration

    torch.manual_seed(seed)
    config = HunYuanVLConfig(text_config=text or text_config(), vision_config=vision or vision_config(),
                             image_token_id=IMAGE, im_start_id=VSTART, im_end_id=VEND, im_newline_id=NEWLINE, **top)
    model = HunYuanVLForConditionalGeneration(config).eval()
    with torch.no_grad():  # the learned row break / begin / end start at random normals: make them distinct
        merger = model.model.vision_tower.patch_merger
        for p in (merger.image_newline, merger.image_begin, merger.image_end):
            p.normal_(0.0, 0.5)
    return _perturb_and_save(model, "tiny_hunyuanvl_", folder), model


def image_tokens(h: int, w: int, merge: int = 2) -> int:
    return (h // merge) * (w // merge + 1) + 2


def batch(grids: list[list[tuple[int, int, int]]] | None = None, pad_left: list[int] | None = None, seed: int = 0,
          text_len: int = 5, patch_width: int = 3 * 2 * 2) -> dict:
    """Item i holds the images grids[i], each as <im_start> image tokens <im_end> after two words."""
    grids = GRIDS if grids is None else grids
    pad_left = pad_left if pad_left is not None else [0, 3][: len(grids)]
    g = torch.Generator().manual_seed(seed)
    rows = []
    for item in grids:
        ids = [BOS]
        for _, h, w in item:
            ids += torch.randint(3, 90, (2,), generator=g).tolist() + [VSTART] + [IMAGE] * image_tokens(h, w) + [VEND]
        rows.append(ids + torch.randint(3, 90, (text_len,), generator=g).tolist())
    input_ids, mask = pad_rows(rows, pad_left)
    all_grids = [grid for item in grids for grid in item]
    n_patches = sum(t * h * w for t, h, w in all_grids)
    return dict(input_ids=input_ids, attention_mask=mask, pixel_values=torch.randn(n_patches, patch_width, generator=g),
                image_grid_thw=torch.tensor(all_grids, dtype=torch.long), mm_token_type_ids=(input_ids == IMAGE).long())


@functools.lru_cache(maxsize=None)
def hunyuanvl() -> tiny.Built:
    """tests/test_parity.py's factory: the tiny HunYuanVL, the padded batch of different image sizes, and an unpadded
    batch (2 items with one 4 x 6 image each)."""
    folder, hf = make_hunyuanvl()
    return tiny.load(folder, hf, batch(), batch([[(1, 4, 6)], [(1, 4, 6)]], [0, 0], seed=1))
