"""Tiny random Qwen2-VL / Qwen2.5-VL / Idefics3 / SmolVLM checkpoints built offline, plus input batches."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

import torch

from tests.tiny import BOS, EOS, PAD, VOCAB, Built, llama_text_config, load, pad_rows

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
    input_ids, mask = pad_rows(rows, pad_left)
    all_grids = [grid for item in grids for grid in item]
    n_patches = sum(t * h * w for t, h, w in all_grids)
    return dict(input_ids=input_ids, attention_mask=mask,
                pixel_values=torch.randn(n_patches, patch_width, generator=g),
                image_grid_thw=torch.tensor(all_grids, dtype=torch.long),
                mm_token_type_ids=(input_ids == IMAGE).long())


# ---------------------------------------------------------------- Idefics3 / SmolVLM
IDEFICS_SIDE = 2  # LM tokens per tile side: image 8 / patch 2 = 4 patches, pixel shuffle 2 -> 2


def idefics_tokenizer() -> Any:
    """A WordLevel tokenizer with Idefics3's special tokens at fixed ids (w0..w99 are words; w0 pad, w1 bos, w2 eos)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(100)}
    specials = {"<image>": IMAGE, "<fake_token_around_image>": FAKE, "<global-img>": GLOBAL,
                "<end_of_utterance>": 115, **{f"<row_{r + 1}_col_{c + 1}>": i for (r, c), i in ROW_COL.items()}}
    vocab.update(specials)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w3"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w3", pad_token="w0", bos_token="w1",
                                   eos_token="w2", additional_special_tokens=list(specials))


def make_idefics(arch: str = "idefics3", folder: Path | None = None, seed: int = 0, text: dict | None = None,
                 save_tokenizer: bool = True) -> tuple[Path, Any]:
    """arch "idefics3" or "smolvlm"; the folder also holds the tokenizer (the marker ids come from it)."""
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, SmolVLMConfig,
                              SmolVLMForConditionalGeneration)

    torch.manual_seed(seed)
    cls, model_cls, vt = ((Idefics3Config, Idefics3ForConditionalGeneration, "idefics3_vision") if arch == "idefics3"
                          else (SmolVLMConfig, SmolVLMForConditionalGeneration, "smolvlm_vision"))
    vc = dict(model_type=vt, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              image_size=8, patch_size=2, num_channels=3)
    config = cls(text_config=text or llama_text_config(), vision_config=vc, image_token_id=IMAGE, scale_factor=2)
    model = model_cls(config).eval()
    folder = _perturb_and_save(model, f"tiny_{arch}_", folder)
    if save_tokenizer:
        idefics_tokenizer().save_pretrained(folder)
    return folder, model


def idefics_image_tokens(rows: int, cols: int, side: int = IDEFICS_SIDE) -> list[int]:
    """Token ids the Idefics3 processor writes for one image split into rows x cols tiles (0, 0 = global only)."""
    n = side * side
    ids = []
    for r in range(rows):
        for c in range(cols):
            ids += [FAKE, ROW_COL[(r, c)]] + [IMAGE] * n
    return ids + [FAKE, GLOBAL] + [IMAGE] * n + [FAKE]


def idefics_batch(seed: int = 0, text_len: int = 5, tiles: tuple = ((2, 2), (0, 0)), pads: tuple = (0, 3),
                  pad_last_image: bool = True) -> dict:
    """One image per item, split into tiles[i] = (rows, cols) tiles + global ((0, 0): not split, one tile).

    Default: item 0 in 2 x 2 tiles + global (5 tiles); item 1 one unsplit image 8 x 6 padded to 8 x 8
    (``pad_last_image``: NaViT patch mask); left pads ``pads``."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for r, c in tiles:
        rows.append([BOS] + torch.randint(3, 90, (2,), generator=g).tolist() + idefics_image_tokens(r, c)
                    + torch.randint(3, 90, (text_len,), generator=g).tolist())
    input_ids, mask = pad_rows(rows, list(pads))
    n_tiles = [r * c + 1 for r, c in tiles]
    pixel_values = torch.zeros(len(tiles), max(n_tiles), 3, 8, 8)
    pixel_mask = torch.zeros(len(tiles), max(n_tiles), 8, 8, dtype=torch.long)
    for i, n in enumerate(n_tiles):
        if pad_last_image and i == len(tiles) - 1:
            pixel_values[i, :n, :, :, :6] = torch.randn(n, 3, 8, 6, generator=g)
            pixel_mask[i, :n, :, :6] = 1
        else:
            pixel_values[i, :n] = torch.randn(n, 3, 8, 8, generator=g)
            pixel_mask[i, :n] = 1
    return dict(input_ids=input_ids, attention_mask=mask, pixel_values=pixel_values, pixel_attention_mask=pixel_mask)


# ---------------------------------------------------------------- (folder, hf, inputs) builders for test_parity.CASES
def qwen_case(version: str) -> tuple[Path, Any, dict]:
    """Batch 2, left padding; item 1 holds two images of different sizes (the second spans 4 windows in 2.5)."""
    folder, hf = make_qwen(version)
    return folder, hf, qwen_batch([[(1, 4, 6)], [(1, 6, 4), (1, 8, 8)]], [4, 0])


def idefics_case(arch: str) -> tuple[Path, Any, dict]:
    folder, hf = make_idefics(arch)
    return folder, hf, idefics_batch()


# ---------------------------------------------------------------- cached factories (tests/tiny.py: Built)
@functools.lru_cache(maxsize=None)
def qwen(version: str = "2") -> Built:
    """qwen_case; unpadded: two images of equal token count (16 each; 4 windows each in 2.5)."""
    folder, hf, inputs = qwen_case(version)
    return load(folder, hf, inputs, qwen_batch([[(1, 8, 8)], [(1, 4, 16)]], [0, 0], seed=1))


@functools.lru_cache(maxsize=None)
def idefics(arch: str = "idefics3") -> Built:
    """idefics_case; unpadded: two items of 2 x 2 tiles + global, no padded pixels (no NaViT patch mask)."""
    folder, hf, inputs = idefics_case(arch)
    return load(folder, hf, inputs, idefics_batch(seed=1, tiles=((2, 2), (2, 2)), pads=(0, 0), pad_last_image=False))
