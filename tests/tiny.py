"""Tiny random HF checkpoints built offline (no downloads), shared by the tests."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

VOCAB = 120
IMAGE_TOKEN = 100
PAD = 0
BOS = 1
EOS = 2


def llama_text_config(**overrides: Any) -> dict:
    cfg = dict(model_type="llama", vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
               num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, pad_token_id=PAD,
               bos_token_id=BOS, eos_token_id=EOS, rms_norm_eps=1e-5)
    cfg.update(overrides)
    return cfg


def clip_vision_config(**overrides: Any) -> dict:
    cfg = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=48, num_hidden_layers=3,
               num_attention_heads=4, image_size=8, patch_size=2, num_channels=3, projection_dim=16)
    cfg.update(overrides)
    return cfg


def make_llava(folder: Path | None = None, text: dict | None = None, vision: dict | None = None, seed: int = 0,
               **top: Any) -> tuple[Path, Any]:
    """Save a tiny random LlavaForConditionalGeneration; returns (folder, hf_model in eval mode)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    kwargs = dict(text_config=text or llama_text_config(), vision_config=vision or clip_vision_config(),
                  image_token_id=IMAGE_TOKEN, vision_feature_layer=-2, vision_feature_select_strategy="default")
    kwargs.update(top)
    config = LlavaConfig(**kwargs)
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():  # random init leaves norms at 1 and biases at 0: perturb them so they are tested
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias") or "layrnorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    folder = Path(folder or tempfile.mkdtemp(prefix="tiny_llava_"))
    model.save_pretrained(folder)
    return folder, model


def pad_rows(rows: list[list[int]], pad_left: list[int], right: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) for token rows padded with PAD to one length (+ pad_left[i] extra pads)."""
    length = max(len(r) + p for r, p in zip(rows, pad_left))
    input_ids = torch.full((len(rows), length), PAD)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, r in enumerate(rows):
        start = 0 if right else length - len(r)
        input_ids[i, start:start + len(r)] = torch.tensor(r)
        mask[i, start:start + len(r)] = 1
    return input_ids, mask


def image_tokens_per_image(hf_model: Any) -> int:
    vc = hf_model.config.vision_config
    n = (vc.image_size // vc.patch_size) ** 2
    return n + (1 if hf_model.config.vision_feature_select_strategy == "full" else 0)


def llava_batch(hf_model: Any, prompts_images: list[int], pad_left: list[int], seed: int = 0, text_len: int = 5,
                right: bool = False):
    """input_ids/attention_mask/pixel_values for a batch: item i has prompts_images[i] images and pad_left[i] pads
    (on the right instead when ``right``)."""
    g = torch.Generator().manual_seed(seed)
    n_img = image_tokens_per_image(hf_model)
    rows = []
    for k in prompts_images:
        ids = [BOS]
        for _ in range(k):
            ids += torch.randint(3, 90, (2,), generator=g).tolist() + [IMAGE_TOKEN] * n_img
        ids += torch.randint(3, 90, (text_len,), generator=g).tolist()
        rows.append(ids)
    input_ids, mask = pad_rows(rows, pad_left, right=right)
    vc = hf_model.config.vision_config
    pixel_values = torch.randn(sum(prompts_images), 3, vc.image_size, vc.image_size, generator=g)
    return dict(input_ids=input_ids, attention_mask=mask, pixel_values=pixel_values)


WORDS = ["USER:", "ASSISTANT:", "what", "is", "this", "?", "a", "the", "red", "green", "blue", "circle", "square",
         "image", "describe", "color", "shape", "it", "of", "in"]


def word_tokenizer():
    """A WordLevel tokenizer over VOCAB ids: <pad>=0, <s>=1, </s>=2, words, <image>=IMAGE_TOKEN."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": PAD, "<s>": BOS, "</s>": EOS, "<unk>": 3}
    for i, w in enumerate(WORDS):
        vocab[w] = 4 + i
    for i in range(4 + len(WORDS), VOCAB):
        vocab.setdefault(f"w{i}", i)
    vocab = {k: v for k, v in vocab.items() if v != IMAGE_TOKEN}
    vocab["<image>"] = IMAGE_TOKEN
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", extra_special_tokens={"image_token": "<image>"})


def save_llava_processor(folder: Path, image_size: int = 8, patch_size: int = 2, strategy: str = "default"):
    """A real LlavaProcessor (word tokenizer + CLIP image processor) saved beside a tiny checkpoint."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=word_tokenizer(), patch_size=patch_size,
                               vision_feature_select_strategy=strategy, num_additional_image_tokens=1,
                               image_token="<image>")
    processor.save_pretrained(folder)
    return processor


def pil_image(seed: int, size: int = 24):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
