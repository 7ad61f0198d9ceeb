"""A tiny random Idefics2ForConditionalGeneration (+ an offline Idefics2Processor) built from a config in code.

Shapes: NaViT SigLIP tower (image_size 8, patch 2: a 4x4 position table; images of any size, padded and masked),
modality MLP 32 -> 64 -> 32, perceiver resampler of 2 blocks resampling every (sub-)image to N_LATENTS = 6 latents
(not a square: latents are no grid), GQA 4/2 heads of 8 in the resampler; Mistral LM 3 layers, GQA 4/2.
The prompt layout is the processor's: ``<fake_token_around_image>`` + 6 x ``<image>`` + ``<fake_token_around_image>``
per (sub-)image, adjacent fakes merged.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

import torch

from tests import tiny
from tests.tiny_qwen_idefics import FAKE, IMAGE, idefics_tokenizer

BOS, PAD = tiny.BOS, tiny.PAD
N_LATENTS = 6
PATCH = 2


def mistral_text_config(**overrides: Any) -> dict:
    cfg = dict(model_type="mistral", vocab_size=tiny.VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5,
               sliding_window=4096, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=tiny.EOS)
    cfg.update(overrides)
    return cfg


def vision_config(**overrides: Any) -> dict:
    cfg = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=8,
               patch_size=PATCH, num_channels=3)
    cfg.update(overrides)
    return cfg


def perceiver_config(**overrides: Any) -> dict:
    cfg = dict(hidden_act="silu", hidden_size=32, rms_norm_eps=1e-5, resampler_n_latents=N_LATENTS, resampler_depth=2,
               resampler_n_heads=4, resampler_head_dim=8, num_key_value_heads=2)
    cfg.update(overrides)
    return cfg


def make_idefics2(folder: Path | None = None, seed: int = 0, text: dict | None = None, processor: bool = True,
                  splitting: bool = False, **top: Any) -> tuple[Path, Any]:
    """Save a tiny random Idefics2ForConditionalGeneration (and its processor); returns (folder, hf model in eval)."""
    from transformers import Idefics2Config, Idefics2ForConditionalGeneration

    torch.manual_seed(seed)
    kwargs = dict(text_config=text or mistral_text_config(), vision_config=vision_config(),
                  perceiver_config=perceiver_config(), image_token_id=IMAGE)
    kwargs.update(top)
    model = Idefics2ForConditionalGeneration(Idefics2Config(**kwargs)).eval()
    with torch.no_grad():  # init leaves norms at 1, biases at 0 and the latents at 1: perturb them so they are tested
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(("bias", "latents")):
                p.add_(torch.randn_like(p) * 0.1)
    folder = Path(folder or tempfile.mkdtemp(prefix="tiny_idefics2_"))
    model.save_pretrained(folder)
    if processor:
        save_idefics2_processor(folder, splitting=splitting)
    return folder, model


def idefics2_processor(splitting: bool = False, longest_edge: int = 12, shortest_edge: int = 5):
    """A real Idefics2Processor: the word tokenizer with Idefics' special tokens + the PIL Idefics2 image processor
    (shortest edge 5 px, longest 12 px: sizes that are no multiple of the 2 px patch occur)."""
    from transformers import Idefics2Processor
    from transformers.models.idefics2.image_processing_pil_idefics2 import Idefics2ImageProcessorPil

    ip = Idefics2ImageProcessorPil(size={"shortest_edge": shortest_edge, "longest_edge": longest_edge},
                                   do_image_splitting=splitting)
    return Idefics2Processor(image_processor=ip, tokenizer=idefics_tokenizer(), image_seq_len=N_LATENTS)


def save_idefics2_processor(folder: Path, splitting: bool = False):
    processor = idefics2_processor(splitting)
    processor.save_pretrained(folder)
    return processor


def image_ids(n_sub: int) -> list[int]:
    """The processor's tokens for ``n_sub`` adjacent (sub-)images: fake, latents, fake, latents, ..., fake."""
    ids = [FAKE]
    for _ in range(n_sub):
        ids += [IMAGE] * N_LATENTS + [FAKE]
    return ids


def idefics2_batch(images: list[list[tuple[int, int]]], pads: list[int], seed: int = 0, text_len: int = 5) -> dict:
    """Item i holds the images ``images[i]`` ((height, width) in pixels, each after 2 random words); pixel_values
    [batch, max_images, 3, H, W] zero-padded to the largest image as the processor pads them, pixel_attention_mask
    marking each image's pixels; left pads ``pads``."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for item in images:
        ids = [BOS]
        for _ in item:
            ids += torch.randint(3, 90, (2,), generator=g).tolist() + image_ids(1)
        rows.append(ids + torch.randint(3, 90, (text_len,), generator=g).tolist())
    input_ids, mask = tiny.pad_rows(rows, pads)
    sizes = [s for item in images for s in item]
    h, w = max(s[0] for s in sizes), max(s[1] for s in sizes)
    n = max(len(item) for item in images)
    pixel_values = torch.zeros(len(images), n, 3, h, w)
    pixel_mask = torch.zeros(len(images), n, h, w, dtype=torch.long)
    for b, item in enumerate(images):
        for i, (ih, iw) in enumerate(item):
            pixel_values[b, i, :, :ih, :iw] = torch.randn(3, ih, iw, generator=g)
            pixel_mask[b, i, :ih, :iw] = 1
    return dict(input_ids=input_ids, attention_mask=mask, pixel_values=pixel_values, pixel_attention_mask=pixel_mask)


def idefics2_case() -> tuple[Path, Any, dict]:
    """Batch 3, left padding 2, 0, 9: item 0 one 8x8 image, item 1 two images (5x12 and 12x7: odd sizes, so partly
    padded patches are masked), item 2 one 6x4 image."""
    folder, hf = make_idefics2()
    return folder, hf, idefics2_batch([[(8, 8)], [(5, 12), (12, 7)], [(6, 4)]], [2, 0, 9])


@functools.lru_cache(maxsize=None)
def idefics2() -> tiny.Built:
    """tests/test_parity.py's factory: idefics2_case's model and batch, plus an unpadded batch (2 x one 8x8 image)."""
    folder, hf, inputs = idefics2_case()
    return tiny.load(folder, hf, inputs, idefics2_batch([[(8, 8)], [(8, 8)]], [0, 0], seed=1))
