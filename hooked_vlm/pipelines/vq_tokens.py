"""Native multimodal (Chameleon, Emu3): VQ codes are LM tokens; their embeddings are the image embeddings."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..spans import ImageLayout
from .base import register_pipeline

if TYPE_CHECKING:
    from ..model import HookedVLM


def _image_sizes(model: "HookedVLM", pixel_values: torch.Tensor, extras: dict) -> torch.Tensor | None:
    image_sizes = extras.get("image_sizes")
    if model.cfg.vision.encode == "sized" and image_sizes is None:
        raise ValueError("this model's VQ tokenizer needs image_sizes ([n_images, 2] height, width) with pixel_values; "
                         "the checkpoint's processor returns them (model.prepare_inputs)")
    if image_sizes is not None:
        image_sizes = torch.as_tensor(image_sizes, device=pixel_values.device).reshape(-1, 2)
        if image_sizes.shape[0] != pixel_values.shape[0]:
            raise ValueError(f"{image_sizes.shape[0]} image_sizes for {pixel_values.shape[0]} images")
    return image_sizes


def vq_layouts(model: "HookedVLM", pixel_values: torch.Tensor, extras: dict) -> list[ImageLayout]:
    """Each image's code grid: its (height, width) / the tokenizer's downsampling, plus one row break per row."""
    image_sizes = _image_sizes(model, pixel_values, extras)
    model.vision.check_pixels(pixel_values, image_sizes)
    f = model.cfg.vision.downsample
    sizes = [tuple(pixel_values.shape[2:])] * pixel_values.shape[0] if image_sizes is None else image_sizes.tolist()
    grids = [(int(h) // f, int(w) // f) for h, w in sizes]
    rows, cols = pixel_values.shape[2] // f, pixel_values.shape[3] // f
    for i, (r, c) in enumerate(grids):  # the VQ tokenizer's own check, before the spans are built
        if r > rows or c > cols:
            raise ValueError(f"image_sizes[{i}] = {r * f}x{c * f} exceeds the pixel batch ({rows * f}x{cols * f})")
    return _layouts(grids, model.cfg.vision.row_break_token_id is not None)


def _layouts(sizes: list[tuple[int, int]], row_breaks: bool) -> list[ImageLayout]:
    return [ImageLayout(rows=r, cols=c, newline_offsets=[k * (c + 1) + c for k in range(r)] if row_breaks else None)
            for r, c in sizes]


@register_pipeline("vq_tokens", layouts=vq_layouts)
def vq_tokens(model: "HookedVLM", pixel_values: torch.Tensor, extras: dict) -> tuple[torch.Tensor, list[ImageLayout]]:
    """pixels -> VQ codes -> LM token ids (``vision.hook_codes``) -> LM token embeddings."""
    tokens, sizes = model.vision(pixel_values, _image_sizes(model, pixel_values, extras))
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
    return embeds, _layouts(sizes, row_breaks)
