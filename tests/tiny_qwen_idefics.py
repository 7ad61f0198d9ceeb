"""Tiny random Qwen2-VL / Qwen2.5-VL / Idefics3 / SmolVLM checkpoints built offline, plus input batches."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from tests.tiny import BOS, EOS, PAD, VOCAB, llama_text_config

IMAGE, VIDEO, VSTART, VEND = 100, 101, 102, 103
# Idefics3 / SmolVLM special tokens
FAKE, GLOBAL = 104, 105
ROW_COL = {(r, c): 106 + 3 * r + c for r in range(3) for c in range(3)}  # <row_{r+1}_col_{c+1}>


def _perturb_and_save(model: Any, prefix: str, folder: Path | None) -> Path:
    with torch.no_grad():  # random init leaves norms at 1 and biases at 0: perturb them so they are tested
        for name, p in model.named_parameters():
            if "norm" in name or "ln_q" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    folder = Path(folder or tempfile.mkdtemp(prefix=prefix))
    model.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------- Qwen2-VL / Qwen2.5-VL
def qwen_text_config(model_type: str = "qwen2_vl_text", **overrides: Any) -> dict:
    cfg = dict(model_type=model_type, vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5,
               pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
               rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]})
    cfg.update(overrides)
    return cfg


def make_qwen(version: str = "2", folder: Path | None = None, seed: int = 0, text: dict | None = None,
              vision: dict | None = None) -> tuple[Path, Any]:
    """version "2" (Qwen2-VL) or "2.5" (Qwen2.5-VL, window attention with 2x2-token windows, block 1 full)."""
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig,
                              Qwen2VLForConditionalGeneration)

    torch.manual_seed(seed)
    if version == "2":
        vc = dict(depth=2, embed_dim=16, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=2, spatial_merge_size=2,
                  temporal_patch_size=2, in_channels=3)
        cls, model_cls, tt = Qwen2VLConfig, Qwen2VLForConditionalGeneration, "qwen2_vl_text"
    else:
        vc = dict(depth=3, hidden_size=16, intermediate_size=24, num_heads=2, out_hidden_size=32, patch_size=2,
                  spatial_merge_size=2, temporal_patch_size=2, in_channels=3, window_size=8, fullatt_block_indexes=[1])
        cls, model_cls, tt = Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, "qwen2_5_vl_text"
    vc.update(vision or {})
    config = cls(text_config=text or qwen_text_config(tt), vision_config=vc, image_token_id=IMAGE,
                 video_token_id=VIDEO, vision_start_token_id=VSTART, vision_end_token_id=VEND)
    model = model_cls(config).eval()
    return _perturb_and_save(model, f"tiny_qwen{version}_", folder), model


def qwen_batch(grids: list[list[tuple[int, int, int]]], pad_left: list[int], seed: int = 0, text_len: int = 5,
               merge: int = 2, patch_width: int = 3 * 2 * 2 * 2) -> dict:
    """Item i holds the images grids[i] (t, h, w in patches), each as <vision_start> image tokens <vision_end>."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for item in grids:
        ids = [BOS]
        for t, h, w in item:
            ids += torch.randint(3, 90, (2,), generator=g).tolist() + [VSTART] + [IMAGE] * (t * h * w // merge**2) + [VEND]
        ids += torch.randint(3, 90, (text_len,), generator=g).tolist()
        rows.append(ids)
    input_ids, mask = _left_pad(rows, pad_left)
    all_grids = [grid for item in grids for grid in item]
    n_patches = sum(t * h * w for t, h, w in all_grids)
    return dict(input_ids=input_ids, attention_mask=mask,
                pixel_values=torch.randn(n_patches, patch_width, generator=g),
                image_grid_thw=torch.tensor(all_grids, dtype=torch.long),
                mm_token_type_ids=(input_ids == IMAGE).long())


def _left_pad(rows: list[list[int]], pad_left: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(r) + p for r, p in zip(rows, pad_left))
    input_ids = torch.full((len(rows), length), PAD)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, length - len(r):] = torch.tensor(r)
        mask[i, length - len(r):] = 1
    return input_ids, mask
