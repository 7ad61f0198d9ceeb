"""Native multimodal (Chameleon, Emu3): VQ codes are LM tokens; their embeddings are the image embeddings."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..spans import ImageLayout
from .base import register_pipeline

if TYPE_CHECKING:
    from ..model import HookedVLM


@register_pipeline("vq_tokens")
def vq_tokens(model: "HookedVLM", pixel_values: torch.Tensor, extras: dict) -> tuple[torch.Tensor, list[ImageLayout]]:
    """pixels -> VQ codes -> LM token ids (``vision.hook_codes``) -> LM token embeddings."""
    image_sizes = extras.get("image_sizes")
    if model.cfg.vision.encode == "sized" and image_sizes is None:
        raise ValueError("this model's VQ tokenizer needs image_sizes ([n_images, 2] height, width) with pixel_values; "
                         "the checkpoint's processor returns them (model.prepare_inputs)")
    if image_sizes is not None:
        image_sizes = torch.as_tensor(image_sizes, device=pixel_values.device).reshape(-1, 2)
        if image_sizes.shape[0] != pixel_values.shape[0]:
            raise ValueError(f"{image_sizes.shape[0]} image_sizes for {pixel_values.shape[0]} images")
    tokens, sizes = model.vision(pixel_values, image_sizes)
    row_breaks = model.cfg.vision.row_break_token_id is not None
    flat = []
    for i, (r, c) in enumerate(sizes):
        ids = tokens[i][tokens[i] >= 0]
        if ids.numel() != r * (c + int(row_breaks)):
            raise ValueError(f"vision.hook_codes: image {i} has {ids.numel()} token ids >= 0; its {r}x{c} code grid "
                             f"needs {r * (c + int(row_breaks))}")
        if int(ids.max()) >= model.cfg.d_vocab:
            raise ValueError(f"vision.hook_codes: token id {int(ids.max())} is outside the vocabulary ({model.cfg.d_vocab})")
        flat.append(ids)
    embeds = model.embed(torch.cat(flat))
    return embeds, [ImageLayout(rows=r, cols=c, newline_offsets=[k * (c + 1) + c for k in range(r)] if row_breaks else None)
                    for r, c in sizes]
