"""LFM2-VL: variable-size image tiles -> SigLIP2 NaFlex tower -> pixel unshuffle + MLP, tiles grouped per image.

Inputs (the LFM2-VL image processor's): ``pixel_values`` [n_tiles_total, max_patches, C * p * p] -- every tile of
every image of the batch in prompt order, each a padded sequence of flattened patches -- ``pixel_attention_mask``
[n_tiles_total, max_patches] (1 at real patches) and ``spatial_shapes`` [n_tiles_total, 2] (patch rows, cols). A small
image is one tile at its own (resized) shape; a large one is split into a grid of equal tiles, followed (when the
processor's ``use_thumbnail``) by a thumbnail of the whole image. A tile of ``rows x cols`` patches gives
``rows / f * cols / f`` LM tokens (``f`` = the projector's factor), row-major.

Tiles are grouped into images by the prompt: with the ``<|image_start|>`` / ``<|image_end|>`` ids known
(``cfg.roles.boi_token_id`` / ``eoi_token_id``, read from the checkpoint's tokenizer) an image is every tile whose
image tokens sit between one start and its end; without them, every maximal run of image tokens is one image (the
processor's ``use_image_special_tokens=False`` layout; with markers but unknown ids each tile is then its own image).
Layouts: one tile shape per tile (a thumbnail's differs), span ``thumbnail`` for the tile after a
``<|img_thumbnail|>`` marker (``cfg.roles.extra["thumbnail_marker"]``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..spans import ImageLayout
from .base import register_pipeline

if TYPE_CHECKING:
    from ..model import HookedVLM


def check_naflex_inputs(model: "HookedVLM", pixel_values: torch.Tensor, extras: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(patch mask [tile, patch] bool, spatial_shapes [tile, 2]) after checking they fit ``pixel_values``."""
    vcfg = model.cfg.vision
    width = vcfg.n_channels * vcfg.patch_size**2
    if pixel_values.ndim != 3 or pixel_values.shape[-1] != width:
        raise ValueError(f"pixel_values has shape {tuple(pixel_values.shape)}; this model takes flattened patches "
                         f"[n_tiles, max_patches, {width}] (the LFM2-VL / Siglip2 image processor's output)")
    shapes, mask = extras.get("spatial_shapes"), extras.get("pixel_attention_mask")
    if shapes is None or mask is None:
        raise ValueError("this model needs spatial_shapes [n_tiles, 2] and pixel_attention_mask [n_tiles, max_patches] "
                         "beside pixel_values (the image processor returns all three)")
    shapes, mask = torch.as_tensor(shapes).to(pixel_values.device), torch.as_tensor(mask).to(pixel_values.device).bool()
    n, length = pixel_values.shape[:2]
    if tuple(shapes.shape) != (n, 2) or tuple(mask.shape) != (n, length):
        raise ValueError(f"spatial_shapes {tuple(shapes.shape)} / pixel_attention_mask {tuple(mask.shape)} do not fit "
                         f"pixel_values {tuple(pixel_values.shape)}: expected ({n}, 2) and ({n}, {length})")
    counts, cells = mask.sum(1), shapes[:, 0] * shapes[:, 1]
    first = (torch.arange(length, device=mask.device)[None] < counts[:, None])
    if not torch.equal(counts, cells) or not torch.equal(first, mask):
        raise ValueError("pixel_attention_mask must mark rows * cols real patches (spatial_shapes), first in each "
                         f"tile; got {counts.tolist()} marked for shapes {shapes.tolist()}")
    return mask, shapes


def naflex_layouts(model: "HookedVLM", pixel_values: torch.Tensor, extras: dict) -> list[ImageLayout]:
    """The layouts from the inputs alone: each tile's token grid (spatial_shapes / the projector's factor), grouped
    into images by the prompt."""
    _, shapes = check_naflex_inputs(model, pixel_values, extras)
    f = model.projector.factor
    grids = [(r // f, c // f) for r, c in shapes.tolist()]
    return group_tiles(model, extras.get("input_ids"), grids)


@register_pipeline("naflex_unshuffle", layouts=naflex_layouts)
def naflex_unshuffle(model: "HookedVLM", pixel_values: torch.Tensor, extras: dict) -> tuple[torch.Tensor, list[ImageLayout]]:
    layouts = naflex_layouts(model, pixel_values, extras)
    mask, shapes = check_naflex_inputs(model, pixel_values, extras)
    embeds = model.projector(model.vision(pixel_values, mask, shapes), shapes)  # [tile, max_tokens, d_model]
    counts = model.projector.tokens_per_image(shapes)
    flat = torch.cat([embeds[i, :k] for i, k in enumerate(counts)])
    return flat, layouts


def group_tiles(model: "HookedVLM", input_ids: torch.Tensor | None, grids: list[tuple[int, int]]) -> list[ImageLayout]:
    """One layout per image: the tiles (their token grids ``grids``, in order) whose tokens each image segment of
    the prompt holds (see the module docstring). Without input_ids every tile is its own image."""
    if input_ids is None:
        return [ImageLayout(rows=r, cols=c) for r, c in grids]
    roles = model.cfg.roles
    thumb_ids = set(roles.extra.get("thumbnail_marker", ()))
    queue, layouts = list(grids), []
    for b, row in enumerate(input_ids.tolist()):
        for n_tokens, thumbnail in _segments(row, roles.image_token_id, roles.boi_token_id, roles.eoi_token_id, thumb_ids):
            shapes, total = [], 0
            while total < n_tokens and queue:
                shapes.append(queue.pop(0))
                total += shapes[-1][0] * shapes[-1][1]
            if total != n_tokens:
                raise ValueError(f"batch item {b}: an image of the prompt holds {n_tokens} image tokens but the tiles "
                                 f"left in pixel_values give {total}; build the prompt and pixel_values together with "
                                 "the checkpoint's processor")
            layouts.append(ImageLayout(rows=shapes[0][0], cols=shapes[0][1], tiles=len(shapes), tile_shapes=shapes,
                                       thumbnail=thumbnail and len(shapes) > 1))
    if queue:
        raise ValueError(f"pixel_values holds {len(queue)} tile(s) more than the prompts' image tokens take")
    return layouts


def _segments(row: list[int], image: int, start: int | None, end: int | None, thumb_ids: set[int]):
    """(image tokens, has a thumbnail marker) of each image segment of one prompt."""
    if start is not None and end is not None:
        inside, n, thumb = False, 0, False
        for t in row:
            if t == start:
                inside, n, thumb = True, 0, False
            elif t == end and inside:
                inside = False
                if n:
                    yield n, thumb
            elif inside:
                n += t == image
                thumb |= t in thumb_ids
        return
    n = 0
    for t in row + [None]:
        if t == image:
            n += 1
        elif n:
            yield n, False
            n = 0
