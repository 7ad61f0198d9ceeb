"""A stand-in for ``Qwen2VLProcessor`` (which needs torchvision's video processor to even construct).

It runs the checkpoint's tokenizer and ``Qwen2VLImageProcessor`` (PIL variant), expands every
image placeholder ``<|image_pad|>`` to ``t * h * w / merge**2`` copies as HF's processor does, and
returns what HF's processor returns: input_ids, attention_mask, pixel_values, image_grid_thw,
mm_token_type_ids (0 text, 1 image; ``token_types=False``: none, as EXAONE 4.5's processor, whose model takes none).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch

IMAGE_PLACEHOLDER = "<|image_pad|>"


class QwenVLInputs:
    def __init__(self, tokenizer: Any, image_processor: Any, image_token: str = IMAGE_PLACEHOLDER,
                 token_types: bool = True):
        self.tokenizer = tokenizer
        self.token_types = token_types
        self.image_processor = image_processor
        self.image_token = image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)

    def __call__(self, images: Any = None, text: str | Sequence[str] | None = None, return_tensors: str = "pt",
                 **kwargs: Any) -> dict[str, torch.Tensor]:
        prompts = [text] if isinstance(text, str) else list(text or [])
        out: dict[str, torch.Tensor] = {}
        if images is not None:
            images = list(images) if isinstance(images, (list, tuple)) else [images]
            image_out = self.image_processor(images=images, return_tensors="pt")
            out["pixel_values"] = image_out["pixel_values"]
            out["image_grid_thw"] = image_out["image_grid_thw"]
            merge = self.image_processor.merge_size
            counts = (image_out["image_grid_thw"].prod(-1) // merge**2).tolist()
            prompts = self._expand(prompts, counts)
        elif any(self.image_token in p for p in prompts):
            raise ValueError(f"the prompts hold {self.image_token} but no images were given")
        enc = self.tokenizer(prompts, return_tensors=return_tensors, **kwargs)
        out.update(enc)
        if self.token_types:
            out["mm_token_type_ids"] = (enc["input_ids"] == self.image_token_id).long()
        return out

    def _expand(self, prompts: list[str], counts: list[int]) -> list[str]:
        n_placeholders = sum(p.count(self.image_token) for p in prompts)
        if n_placeholders != len(counts):
            raise ValueError(f"{len(counts)} images were given but the prompts hold {n_placeholders} {self.image_token}")
        queue, expanded = list(counts), []
        for prompt in prompts:
            parts = prompt.split(self.image_token)
            text = parts[0]
            for part in parts[1:]:
                text += "<|placeholder|>" * queue.pop(0) + part
            expanded.append(text.replace("<|placeholder|>", self.image_token))
        return expanded


def with_image_processor(folder: str, make: Callable[[Any], Any]) -> Any:
    """``make(tokenizer)`` (the family's inputs from the folder's tokenizer and image processor); the tokenizer alone
    when the folder has no preprocessor_config.json; None when it has no tokenizer."""
    from transformers import AutoTokenizer

    path = Path(folder)
    if not ((path / "tokenizer_config.json").exists() or (path / "tokenizer.json").exists()):
        return None
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if not (path / "preprocessor_config.json").exists():
        return tokenizer
    return make(tokenizer)


def load_qwen_inputs(folder: str, token_types: bool = True) -> Any:
    """Tokenizer + PIL image processor of a checkpoint folder; the tokenizer alone (or None) when files are missing."""
    def make(tokenizer: Any) -> QwenVLInputs:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        return QwenVLInputs(tokenizer, Qwen2VLImageProcessorPil.from_pretrained(folder), token_types=token_types)

    return with_image_processor(folder, make)
