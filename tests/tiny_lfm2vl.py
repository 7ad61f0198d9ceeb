"""A tiny random Lfm2VlForConditionalGeneration (+ a WordLevel tokenizer with LFM2-VL's image markers), built offline.

Shapes: SigLIP2 NaFlex tower (patch 2, a 4 x 4 position table resized to every tile's grid; 2 layers of 32), pixel
unshuffle x2 + LayerNorm + MLP 128 -> 48 -> 32, LFM2 LM of 5 layers (conv, attention, conv, conv, attention; GQA
4 / 2 heads of 8; short-conv kernel 3). Inputs are built as the LFM2-VL processor lays them out (its image processor
needs torchvision, which this machine lacks): every image is ``<|image_start|>`` + its tiles' image tokens
(``<|img_row_R_col_C|>`` before each tile of a split image, ``<|img_thumbnail|>`` before its thumbnail) +
``<|image_end|>``; ``pixel_values`` [n_tiles, max_patches, 3 * 2 * 2] of flattened patches, ``pixel_attention_mask``
and ``spatial_shapes``. Random weights are perturbed where init leaves them at 1 / 0 (norms, biases), and the conv
layers' in-projection and kernel are scaled up so that they matter (see make_lfm2vl).
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

import torch

from tests import tiny

BOS, PAD, EOS = tiny.BOS, tiny.PAD, tiny.EOS
IMAGE, START, END, THUMB = 100, 101, 102, 103
ROW_COL = {(1, 1): 104, (1, 2): 105, (2, 1): 106, (2, 2): 107}
PATCH, FACTOR = 2, 2
LAYER_TYPES = ["conv", "full_attention", "conv", "conv", "full_attention"]


def text_config(**overrides: Any) -> dict:
    cfg = dict(model_type="lfm2", vocab_size=tiny.VOCAB, hidden_size=32, intermediate_size=64,
               num_hidden_layers=len(LAYER_TYPES), num_attention_heads=4, num_key_value_heads=2,
               layer_types=list(LAYER_TYPES), max_position_embeddings=512, norm_eps=1e-5, conv_L_cache=3,
               block_multiple_of=16, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
    cfg.update(overrides)
    return cfg


def vision_config(**overrides: Any) -> dict:
    cfg = dict(model_type="siglip2_vision_model", hidden_size=32, intermediate_size=48, num_hidden_layers=2,
               num_attention_heads=4, patch_size=PATCH, num_patches=16, num_channels=3, vision_use_head=False)
    cfg.update(overrides)
    return cfg


def tokenizer() -> Any:
    """WordLevel: w0..w99 words (w0 pad, w1 bos, w2 eos), <image> 100 and LFM2-VL's markers 101-107."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(IMAGE)}
    specials = {"<image>": IMAGE, "<|image_start|>": START, "<|image_end|>": END, "<|img_thumbnail|>": THUMB,
                **{f"<|img_row_{r}_col_{c}|>": i for (r, c), i in ROW_COL.items()}}
    vocab.update(specials)
    vocab.update({f"w{i}": i for i in range(108, tiny.VOCAB)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w3"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w3", pad_token="w0", bos_token="w1",
                                   eos_token="w2", additional_special_tokens=list(specials))


def make_lfm2vl(folder: Path | None = None, seed: int = 0, text: dict | None = None, save_tokenizer: bool = True,
                **top: Any) -> tuple[Path, Any]:
    """Save a tiny random Lfm2VlForConditionalGeneration (+ tokenizer); returns (folder, hf model in eval)."""
    from transformers import Lfm2VlConfig, Lfm2VlForConditionalGeneration

    torch.manual_seed(seed)
    kwargs = dict(text_config=text or text_config(), vision_config=vision_config(), image_token_id=IMAGE,
                  projector_hidden_size=48, downsample_factor=FACTOR)
    kwargs.update(top)
    model = Lfm2VlForConditionalGeneration(Lfm2VlConfig(**kwargs)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
            if ".conv.in_proj." in name or ".conv.conv." in name:
                # init (std 0.02) makes b * h a product of two ~0.1 numbers: the conv layers would move the logits by
                # ~1e-4 and no test could see a wrong conv window; x4 on both gates and the kernel makes them count
                p.mul_(4.0)
    folder = Path(folder or tempfile.mkdtemp(prefix="tiny_lfm2vl_"))
    model.save_pretrained(folder)
    if save_tokenizer:
        tokenizer().save_pretrained(folder)
    return folder, model


#: an image: a list of tiles, each (patch rows, patch cols); several tiles = a 2 x 2 or 1 x 2 grid (+ thumbnail)
SMALL = [(4, 6)]  # one tile, 2 x 3 tokens
WIDE = [(4, 4), (4, 4), (2, 4)]  # a 1 x 2 grid of 4 x 4 tiles + a 2 x 4 thumbnail (1 x 2 tokens)
TALL = [(6, 4)]  # one tile, 3 x 2 tokens


def image_ids(tiles: list[tuple[int, int]], markers: bool = True) -> list[int]:
    """The processor's tokens for one image (``use_image_special_tokens`` = ``markers``)."""
    def n(shape):
        return (shape[0] // FACTOR) * (shape[1] // FACTOR)

    ids = [START] if markers else []
    if len(tiles) == 1:
        ids += [IMAGE] * n(tiles[0])
    else:
        *grid, thumb = tiles
        for k, shape in enumerate(grid):
            ids += ([ROW_COL[(1, k + 1)]] if markers else []) + [IMAGE] * n(shape)
        ids += ([THUMB] if markers else []) + [IMAGE] * n(thumb)
    return ids + ([END] if markers else [])


def lfm2vl_batch(images: list[list[list[tuple[int, int]]]], pads: list[int], seed: int = 0, text_len: int = 5,
                 markers: bool = True, max_patches: int = 24) -> dict:
    """Item i holds the images ``images[i]`` (each after 2 random words); tiles in prompt order, each a padded
    sequence of ``max_patches`` flattened 2 x 2 x 3 patches (channels last within a patch, as the processor)."""
    g = torch.Generator().manual_seed(seed)
    rows, tiles = [], []
    for item in images:
        ids = [BOS]
        for image in item:
            ids += torch.randint(3, 90, (2,), generator=g).tolist() + image_ids(image, markers)
            tiles += image
        rows.append(ids + torch.randint(3, 90, (text_len,), generator=g).tolist())
    input_ids, mask = tiny.pad_rows(rows, pads)
    width = 3 * PATCH * PATCH
    pixel_values = torch.zeros(len(tiles), max_patches, width)
    pixel_mask = torch.zeros(len(tiles), max_patches, dtype=torch.long)
    for i, (r, c) in enumerate(tiles):
        pixel_values[i, : r * c] = torch.randn(r * c, width, generator=g)
        pixel_mask[i, : r * c] = 1
    return dict(input_ids=input_ids, attention_mask=mask, pixel_values=pixel_values, pixel_attention_mask=pixel_mask,
                spatial_shapes=torch.tensor(tiles))


def lfm2vl_case() -> tuple[Path, Any, dict]:
    """Batch 3, left pads 3, 0, 7: item 0 a small image, item 1 a split image (2 tiles + thumbnail) then a tall one,
    item 2 a tall image. Untied embeddings and seed 3: with tied ones a random tiny model repeats its input's last
    token forever (the embedding dominates the logits), and greedy generation would test little; seed 3 generates
    10 varied tokens per item, none of them the image token."""
    folder, hf = make_lfm2vl(seed=3, tie_word_embeddings=False)
    return folder, hf, lfm2vl_batch([[SMALL], [WIDE, TALL], [TALL]], [3, 0, 7])


@functools.lru_cache(maxsize=None)
def lfm2vl() -> tiny.Built:
    """tests/test_parity.py's factory: lfm2vl_case's model and batch, plus an unpadded batch (2 x one 4 x 6 image)."""
    folder, hf, inputs = lfm2vl_case()
    return tiny.load(folder, hf, inputs, lfm2vl_batch([[SMALL], [SMALL]], [0, 0], seed=1))
