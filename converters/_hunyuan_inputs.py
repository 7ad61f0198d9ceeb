"""A stand-in for ``HunYuanVLProcessor`` built from a checkpoint's tokenizer and ``HunYuanVLImageProcessorPil``.

It expands every image placeholder (the tokenizer's ``image_token``) to ``1 + (h / m) * (w / m + 1) + 1`` copies as
HF's processor does (``cat_extra_token``: the learned begin / end embeddings sit at the first and last copy), and
returns input_ids, attention_mask, pixel_values, image_grid_thw and mm_token_type_ids (0 text, 1 image). The prompt
must wrap each placeholder in the image start / end tokens (HF's processor refuses it otherwise).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ._qwen_inputs import with_image_processor


def image_token_count(grid_thw: Sequence[int], merge: int) -> int:
    """LM tokens of one image of grid (t, h, w) patches: begin, (h / m) rows of (w / m) cells + a row break, end."""
    _, h, w = (int(v) for v in grid_thw)
    return (h // merge) * (w // merge + 1) + 2


class HunYuanVLInputs:
    def __init__(self, tokenizer: Any, image_processor: Any, image_token: str, image_start: str, image_end: str):
        self.tokenizer, self.image_processor = tokenizer, image_processor
        self.image_token, self.image_start, self.image_end = image_token, image_start, image_end
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)

    def __call__(self, images: Any = None, text: str | Sequence[str] | None = None, return_tensors: str = "pt",
                 **kwargs: Any) -> dict[str, torch.Tensor]:
        prompts = [text] if isinstance(text, str) else list(text or [])
        wrapped = self.image_start + self.image_token + self.image_end
        n_placeholders = sum(p.count(self.image_token) for p in prompts)
        if n_placeholders != sum(p.count(wrapped) for p in prompts):
            raise ValueError(f"every {self.image_token} must be written {wrapped} (HF's HunYuanVLProcessor refuses "
                             "other prompts)")
        out: dict[str, torch.Tensor] = {}
        if images is not None:
            images = list(images) if isinstance(images, (list, tuple)) else [images]
            if n_placeholders != len(images):
                raise ValueError(f"{len(images)} images were given but the prompts hold {n_placeholders} {self.image_token}")
            image_out = self.image_processor(images=images, return_tensors="pt")
            out["pixel_values"], out["image_grid_thw"] = image_out["pixel_values"], image_out["image_grid_thw"]
            counts = [image_token_count(g, self.image_processor.merge_size) for g in image_out["image_grid_thw"].tolist()]
            expanded = []
            for prompt in prompts:
                parts = prompt.split(self.image_token)
                expanded.append(parts[0] + "".join("\0" * counts.pop(0) + part for part in parts[1:]))
            prompts = [p.replace("\0", self.image_token) for p in expanded]
        elif n_placeholders:
            raise ValueError(f"the prompts hold {self.image_token} but no images were given")
        enc = self.tokenizer(prompts, return_tensors=return_tensors, add_special_tokens=False, **kwargs)
        out.update(enc)
        out["mm_token_type_ids"] = (enc["input_ids"] == self.image_token_id).long()
        return out


def load_hunyuan_inputs(folder: str) -> Any:
    """Tokenizer + PIL image processor of a checkpoint folder (the tokenizer alone, or None, when files are missing);
    the image / start / end tokens are the tokenizer's ``image_token`` / ``image_start_token`` / ``image_end_token``."""
    def make(tokenizer: Any) -> HunYuanVLInputs:
        from transformers.models.hunyuan_vl.image_processing_pil_hunyuan_vl import HunYuanVLImageProcessorPil

        return HunYuanVLInputs(tokenizer, HunYuanVLImageProcessorPil.from_pretrained(folder), tokenizer.image_token,
                               tokenizer.image_start_token, tokenizer.image_end_token)

    return with_image_processor(folder, make)
