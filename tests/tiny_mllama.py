"""A tiny random Llama 3.2 Vision (MllamaForConditionalGeneration), built offline, and its batches.

Shapes: tiles of 16x16 px, patch 4 -> 16 patches + a class token = 17 positions per tile (padded to 24 inside the
tower), up to 2 tiles per image (aspect ratios 1x1, 1x2, 2x1: ids 1, 2, 3); local encoder 4 layers, gated global
encoder 2 layers, intermediate layers (1, 3) -> vision output 32 * 3 = 96; linear projector 96 -> 32; text model
4 layers, cross-attention at layers 1 and 3, GQA 4 / 2 heads, vocabulary 120 (+ 8 embedding rows: the image
placeholder ``<|image|>`` is id 120, embedded, never predicted). Gates and norms are perturbed from HF's init
(gates 0 would switch the cross-attention off).

The cross-attention mask is built by the processor's own functions (``get_cross_attention_token_mask``,
``convert_sparse_cross_attention_mask_to_dense``): a text position sees the image whose placeholder precedes it
(consecutive placeholders see the text after the last); text before the first image sees no image.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

import torch

from tests import tiny

VOCAB = tiny.VOCAB  # 120
IMAGE_TOKEN = VOCAB  # 120: the first of the 8 extra embedding rows, as in the real config (128256)
PAD, BOS, EOS = tiny.PAD, tiny.BOS, tiny.EOS
MAX_TILES = 2
ASPECT_RATIOS = [[1, 1], [1, 2], [2, 1]]  # ids 1, 2, 3 (0 = padding image)
IMAGE_SIZE = 16


def vision_config(**overrides: Any) -> dict:
    cfg = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_global_layers=2, attention_heads=4,
               image_size=IMAGE_SIZE, patch_size=4, max_num_tiles=MAX_TILES, supported_aspect_ratios=ASPECT_RATIOS,
               intermediate_layers_indices=[1, 3], vision_output_dim=96, norm_eps=1e-5)
    cfg.update(overrides)
    return cfg


def text_config(**overrides: Any) -> dict:
    cfg = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=2, cross_attention_layers=[1, 3], max_position_embeddings=512, rms_norm_eps=1e-5,
               pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
               rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    cfg.update(overrides)
    return cfg


def make_mllama(folder: Path | None = None, seed: int = 0, text: dict | None = None,
                vision: dict | None = None) -> tuple[Path, Any]:
    from transformers import MllamaConfig, MllamaForConditionalGeneration

    torch.manual_seed(seed)
    config = MllamaConfig(text_config=text or text_config(), vision_config=vision or vision_config(),
                          image_token_index=IMAGE_TOKEN)
    model = MllamaForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
            if "gate" in name and p.numel() == 1:  # HF inits the gates at 0 (attention off): open them
                p.copy_(torch.randn(1) * 0.5 + 0.6)
    folder = Path(folder or tempfile.mkdtemp(prefix="tiny_mllama_"))
    model.save_pretrained(folder)
    return folder, model


def mllama_batch(rows: list[list[int]], tiles: list[list[int]], pad_left: list[int], seed: int = 0) -> dict:
    """Inputs as MllamaProcessor lays them out: ``rows`` token ids (``IMAGE_TOKEN`` placeholders), ``tiles[b]`` the
    aspect-ratio id of each image of row b (1: one tile, 2 / 3: two); padding images (id 0, all tiles masked) fill
    rows with fewer images; the cross-attention mask from the processor's functions."""
    from transformers.models.mllama.processing_mllama import (convert_sparse_cross_attention_mask_to_dense,
                                                               get_cross_attention_token_mask)

    g = torch.Generator().manual_seed(seed)
    input_ids, mask = tiny.pad_rows(rows, pad_left)
    n_img = max(len(t) for t in tiles)
    ids = torch.zeros(len(rows), n_img, dtype=torch.long)
    ar_mask = torch.zeros(len(rows), n_img, MAX_TILES, dtype=torch.long)
    n_tiles = []
    for b, per_image in enumerate(tiles):
        counts = []
        for i, ar in enumerate(per_image):
            h, w = ASPECT_RATIOS[ar - 1]
            ids[b, i] = ar
            ar_mask[b, i, : h * w] = 1
            counts.append(h * w)
        ar_mask[b, len(per_image):, 0] = 1  # the processor marks tile 0 of padding images
        n_tiles.append(counts)
    token_masks = [get_cross_attention_token_mask(row.tolist(), IMAGE_TOKEN) for row in input_ids]
    cam = torch.from_numpy(convert_sparse_cross_attention_mask_to_dense(token_masks, n_tiles, MAX_TILES,
                                                                         input_ids.shape[1]))
    pixel_values = torch.randn(len(rows), n_img, MAX_TILES, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    pixel_values = pixel_values * ar_mask[..., None, None, None]  # padding tiles are zeros, as the processor's
    return dict(input_ids=input_ids, attention_mask=mask, pixel_values=pixel_values, aspect_ratio_ids=ids,
                aspect_ratio_mask=ar_mask, cross_attention_mask=cam)


def _words(g: torch.Generator, n: int) -> list[int]:
    return torch.randint(4, 90, (n,), generator=g).tolist()


@functools.lru_cache(maxsize=None)
def mllama() -> tiny.Built:
    """tests/test_parity.py's factory. Padded batch of 3: row 0 = BOS, 3 words, image (2 tiles), 5 words, image
    (1 tile), 4 words (the mask changes mid-row: the first words see no image, then image 0, then image 1); row 1 =
    BOS, image (1 tile), 6 words; row 2 = BOS, 2 words, image (2x1 tiles), 3 words; left padding. Unpadded: 2 rows of
    BOS, image, 7 words."""
    folder, hf = make_mllama()
    g = torch.Generator().manual_seed(1)
    rows = [[BOS] + _words(g, 3) + [IMAGE_TOKEN] + _words(g, 5) + [IMAGE_TOKEN] + _words(g, 4),
            [BOS, IMAGE_TOKEN] + _words(g, 6),
            [BOS] + _words(g, 2) + [IMAGE_TOKEN] + _words(g, 3)]
    inputs = mllama_batch(rows, [[2, 1], [1], [3]], [0, 2, 1])
    flat = [[BOS, IMAGE_TOKEN] + _words(g, 7) for _ in range(2)]
    unpadded = mllama_batch(flat, [[1], [2]], [0, 0], seed=1)
    return tiny.load(folder, hf, inputs, unpadded, processor=None)
