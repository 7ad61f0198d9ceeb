"""A tiny random Molmo2ForConditionalGeneration (+ a WordLevel tokenizer with Molmo 2's image tokens), built offline.

Shapes: ViT on 10 x 10 crops of 2 x 2 patches (25 patches: pooling windows at the edges hold empty slots, 3 layers of 32, GQA 4 / 2 heads of 8), feature layers
[-1, -3] concatenated (64 wide), adapter: attention pooling of 2 x 2 windows (4 / 2 heads of 8 -> 32), gated MLP 40 ->
32; LM of 3 layers (32 wide, GQA 4 / 2 heads of 8, per-head q / k norms), vocabulary 120 + 8 additional rows (the
image tokens live there, as in the real checkpoints: id >= vocab_size).

Inputs are the Molmo 2 processor's own: HF's Molmo2ImageProcessor code (crop tiling with overlap margins, the low-res
view, pooling windows, crop offsets across the batch) run with a stand-in for its torchvision resize
(``F.interpolate``, bilinear, no antialias: what torchvision does on tensors), and the prompt strings of HF's
``Molmo2Processor.replace_image_token``; ``mm_token_type_ids`` marks every image token and marker, as the
processor's ``create_mm_token_type_ids``. The resize stand-in only changes pixel values, never the layout.
"""

from __future__ import annotations

import functools
import importlib
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

from tests import tiny

BOS, PAD, EOS = tiny.BOS, tiny.PAD, tiny.EOS
VOCAB, EXTRA = 120, 8
SPECIAL = {"<im_start>": 120, "<im_end>": 121, "<im_patch>": 122, "<im_col>": 123, "<low_res_im_start>": 124,
           "<frame_start>": 125, "<frame_end>": 126, "<im_low>": 127}
IMAGE_IDS = tuple(SPECIAL.values())  # what the processor's mm_token_type_ids marks (its image_token_ids)
CROP, PATCH, POOL, MAX_CROPS, MARGINS = 10, 2, [2, 2], 4, [1, 1]


def text_config(**overrides: Any) -> dict:
    cfg = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8, vocab_size=VOCAB,
               additional_vocab_size=EXTRA, num_hidden_layers=3, intermediate_size=64, max_position_embeddings=512,
               rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, pad_token_id=PAD, bos_token_id=BOS,
               eos_token_id=EOS)
    cfg.update(overrides)
    return cfg


def vision_config(**overrides: Any) -> dict:
    cfg = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
               head_dim=8, image_size=[CROP, CROP], patch_size=PATCH)
    cfg.update(overrides)
    return cfg


def adapter_config(**overrides: Any) -> dict:
    cfg = dict(vision_feature_layer=[-1, 0], hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
               head_dim=8, intermediate_size=40, text_hidden_size=32)
    cfg.update(overrides)
    return cfg


def tokenizer() -> Any:
    """WordLevel: w0..w119 (w0 pad, w1 bos, w2 eos) and Molmo 2's image tokens 120-127."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCAB)}
    vocab.update(SPECIAL)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w3"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w3", pad_token="w0", bos_token="w1",
                                   eos_token="w2", additional_special_tokens=list(SPECIAL))


def make_molmo2(folder: Path | None = None, seed: int = 0, text: dict | None = None, **top: Any) -> tuple[Path, Any]:
    """Save a tiny random Molmo2ForConditionalGeneration (+ tokenizer); returns (folder, hf model in eval)."""
    from transformers import Molmo2Config, Molmo2ForConditionalGeneration

    torch.manual_seed(seed)
    kwargs = dict(text_config=text or text_config(), vision_config=vision_config(), adapter_config=adapter_config(),
                  image_start_token_id=SPECIAL["<im_start>"], image_end_token_id=SPECIAL["<im_end>"],
                  image_patch_id=SPECIAL["<im_patch>"], low_res_image_start_token_id=SPECIAL["<low_res_im_start>"],
                  frame_start_token_id=SPECIAL["<frame_start>"], frame_end_token_id=SPECIAL["<frame_end>"],
                  image_col_id=SPECIAL["<im_col>"], initializer_range=0.05)
    kwargs.update(top)
    model = Molmo2ForConditionalGeneration(Molmo2Config(**kwargs)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):  # init leaves them at 1 / 0: a swapped norm would pass
                p.add_(torch.randn_like(p) * 0.1)
            if "multi_modal_projector" in name and name.endswith("weight"):
                # at init the adapter's three matmuls shrink the features to ~1e-4 of the token embeddings, and the
                # pixels would move the logits by ~1e-5 (below the tolerance): x8 per matrix makes them count (image
                # embeddings ~0.65 of the token embeddings' norm; other pixels move the logits by up to ~0.5)
                p.mul_(8.0)
    folder = Path(folder or tempfile.mkdtemp(prefix="tiny_molmo2_"))
    model.save_pretrained(folder)
    tokenizer().save_pretrained(folder)
    return folder, model


def _image_processor() -> Any:
    """HF's Molmo2ImageProcessor code with its torchvision resize / normalize replaced by plain torch."""
    module = importlib.import_module("transformers.models.molmo2.image_processing_molmo2")
    proc = object.__new__(module.Molmo2ImageProcessor)  # its __init__ is not needed by _preprocess

    def resize(image, size, resample=None, antialias=False, **_):
        return F.interpolate(image, size=(size.height, size.width), mode="bilinear", align_corners=False,
                             antialias=False)

    def rescale_and_normalize(images, do_rescale, rescale_factor, do_normalize, mean, std):
        images = images.float() * (rescale_factor if do_rescale else 1.0)
        return (images - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None] if do_normalize else images

    proc.resize, proc.rescale_and_normalize = resize, rescale_and_normalize
    return proc


def process_images(images: list[torch.Tensor]) -> dict:
    """HF's Molmo2ImageProcessor._preprocess on uint8 [3, H, W] images (every image of the batch, in order)."""
    from transformers.image_utils import SizeDict

    out = _image_processor()._preprocess(
        images, do_resize=True, size=SizeDict(height=CROP, width=CROP), resample=None, do_rescale=True,
        rescale_factor=1 / 255, do_normalize=True, image_mean=[0.5] * 3, image_std=[0.5] * 3, do_convert_rgb=True,
        max_crops=MAX_CROPS, overlap_margins=MARGINS, patch_size=PATCH, pooling_size=POOL, disable_grouping=None,
        return_tensors="pt")
    return dict(out)


def image_token_ids(image_inputs: dict, index: int) -> list[int]:
    """HF's Molmo2Processor.replace_image_token (col tokens on, low-res start token) as token ids."""
    module = importlib.import_module("transformers.models.molmo2.processing_molmo2")
    settings = SimpleNamespace(image_use_col_tokens=True, use_single_crop_col_tokens=None,
                               use_single_crop_start_token=True)
    text = module.Molmo2Processor.replace_image_token(settings, image_inputs, index)
    return tokenizer()(text, add_special_tokens=False)["input_ids"]


def molmo2_batch(sizes: list[list[tuple[int, int]]], pads: list[int], seed: int = 0, text_len: int = 5) -> dict:
    """Item i holds images of sizes ``sizes[i]`` ((height, width) each, after 2 random words), then ``text_len``
    words; left padding ``pads[i]``."""
    g = torch.Generator().manual_seed(seed)
    images = [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for item in sizes for h, w in item]
    image_inputs = process_images(images)
    rows, k = [], 0
    for item in sizes:
        ids = [BOS]
        for _ in item:
            ids += torch.randint(3, 90, (2,), generator=g).tolist() + image_token_ids(image_inputs, k)
            k += 1
        rows.append(ids + torch.randint(3, 90, (text_len,), generator=g).tolist())
    input_ids, mask = tiny.pad_rows(rows, pads)
    marks = torch.isin(input_ids, torch.tensor(IMAGE_IDS)).long() * mask
    return dict(input_ids=input_ids, attention_mask=mask, mm_token_type_ids=marks, **image_inputs)


#: (height, width) of the test images: 4 crops (a 2 x 2 tiling, 3 x 3 high-res grid), 2 crops (1 x 2: 3 x 5) and 1
SIZES = {"wide": (20, 30), "small": (8, 8), "tall": (24, 14)}


@functools.lru_cache(maxsize=None)
def molmo2(**text: Any) -> tiny.Built:
    """tests/test_parity.py's factory: batch 3, left pads 4, 0, 9 (item 1 holds two images); an unpadded batch of 2
    items with one image each. Seed 7 generates 9-10 distinct tokens per item, no EOS."""
    folder, hf = make_molmo2(seed=7, text=text_config(**text) if text else None)
    s = SIZES
    inputs = molmo2_batch([[s["wide"]], [s["small"], s["tall"]], [s["small"]]], [4, 0, 9])
    unpadded = molmo2_batch([[s["tall"]], [s["tall"]]], [0, 0], seed=1)
    return tiny.load(folder, hf, inputs, unpadded)
