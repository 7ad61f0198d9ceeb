"""InternVL: dynamic tiles -> ViT (class token dropped) -> pixel shuffle + MLP, tiles grouped per image.

``pixel_values`` [n_tiles_total, C, image_size, image_size]: every image of the batch, in prompt order, as the crops
the processor cut from it (row-major over the tile grid it picked from the image's aspect ratio) followed, when there
is more than one crop, by a thumbnail (the whole image resized to one tile). Every tile gives ``side x side`` LM
tokens (``side`` = patch grid / scale factor). The tiles are grouped into images by the runs of image tokens in
``input_ids`` (the processor writes ``<img>`` + n_tiles * tokens_per_tile image tokens + ``</img>`` per image): a run
of ``k * side**2`` tokens is one image of ``k`` tiles. Layouts: one tile per tile in pixel order, the thumbnail last
(span ``thumbnail``). The tile grid's shape is not in pixel_values, so tiles are numbered, not placed.

``tiles_marked`` (Aya Vision, Cohere2 Vision): the same tiles, whose runs of image tokens are SEPARATED inside an image
(Aya: ``TILE_k`` / ``TILE_GLOBAL`` before each tile; Cohere2 Vision: ``<|IMG_LINE_BREAK|>`` after each), so images are
told apart by their begin / end markers (``roles.boi_token_id`` / ``eoi_token_id``, from the tokenizer): the image
tokens between a begin marker and its end marker are one image. Without the marker ids (no tokenizer) each run of image
tokens counts as one image of whole tiles (the numbers are the same; only the spans then split an image per tile).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..spans import ImageLayout
from .base import check_square_pixels, register_pipeline

if TYPE_CHECKING:
    from ..model import HookedVLM


def tiles_layouts(model: "HookedVLM", pixel_values: torch.Tensor, extras: dict) -> list[ImageLayout]:
    """Per image, its tiles (from the runs of image tokens), each a (grid / scale)-sided grid, the thumbnail last."""
    check_square_pixels(model, pixel_values)
    side = model.cfg.vision.grid_size // model.cfg.projector.extra["scale_factor"]
    tiles = tiles_per_image(model, extras.get("input_ids"), side * side, pixel_values.shape[0])
    return [ImageLayout(rows=side, cols=side, tiles=t, thumbnail=t > 1) for t in tiles]


@register_pipeline("tiles_pixel_shuffle", layouts=tiles_layouts)
def tiles_pixel_shuffle(model: "HookedVLM", pixel_values: torch.Tensor,
                        extras: dict) -> tuple[torch.Tensor, list[ImageLayout]]:
    layouts = tiles_layouts(model, pixel_values, extras)
    embeds = model.projector(model.vision(pixel_values))  # [tile, tokens_per_tile, d_model]
    return embeds.reshape(-1, embeds.shape[-1]), layouts


def tiles_per_image(model: "HookedVLM", input_ids: torch.Tensor | None, per_tile: int, n_tiles: int) -> list[int]:
    """Tiles of each image, from the runs of consecutive image tokens (one run per image); without input_ids every
    tile is its own image."""
    if input_ids is None:
        return [1] * n_tiles
    image_id = model.cfg.roles.image_token_id
    out = []
    for b, row in enumerate(input_ids.tolist()):
        run = 0
        for t in row + [None]:
            if t == image_id:
                run += 1
                continue
            if run:
                if run % per_tile:
                    raise ValueError(f"batch item {b}: a run of {run} image tokens is not a whole number of tiles of "
                                     f"{per_tile} tokens; build the prompt with the checkpoint's processor (it writes "
                                     "<img>, tokens_per_tile image tokens per tile, </img>)")
                out.append(run // per_tile)
            run = 0
    if sum(out) != n_tiles:
        raise ValueError(f"the prompts' image tokens announce {sum(out)} tiles ({out} per image) but pixel_values holds "
                         f"{n_tiles}; use the checkpoint's processor to build the prompt and pixel_values together")
    return out


def tiles_marked_layouts(model: "HookedVLM", pixel_values: torch.Tensor, extras: dict) -> list[ImageLayout]:
    """Per image, its tiles: the image tokens between a begin and the next end-of-image marker (a tile marker or a
    line break may sit between tiles), each tile a (grid / scale)-sided grid, the thumbnail last."""
    check_square_pixels(model, pixel_values)
    side = model.cfg.vision.grid_size // model.cfg.projector.extra["scale_factor"]
    roles = model.cfg.roles
    input_ids = extras.get("input_ids")
    if input_ids is None or roles.boi_token_id is None or roles.eoi_token_id is None:
        tiles = tiles_per_image(model, input_ids, side * side, pixel_values.shape[0])
    else:
        tiles = tiles_between_markers(input_ids, roles.image_token_id, roles.boi_token_id, roles.eoi_token_id,
                                      side * side, pixel_values.shape[0])
    return [ImageLayout(rows=side, cols=side, tiles=t, thumbnail=t > 1) for t in tiles]


@register_pipeline("tiles_marked", layouts=tiles_marked_layouts)
def tiles_marked(model: "HookedVLM", pixel_values: torch.Tensor, extras: dict) -> tuple[torch.Tensor, list[ImageLayout]]:
    layouts = tiles_marked_layouts(model, pixel_values, extras)
    embeds = model.projector(model.vision(pixel_values))  # [tile, tokens_per_tile, d_model]
    return embeds.reshape(-1, embeds.shape[-1]), layouts


def tiles_between_markers(input_ids: torch.Tensor, image_id: int, boi_id: int, eoi_id: int, per_tile: int,
                          n_tiles: int) -> list[int]:
    """Tiles of each image: the image tokens between a begin marker and the next end marker, in whole tiles."""
    out = []
    for b, row in enumerate(input_ids.tolist()):
        count = None  # image tokens since the open begin marker; None = outside an image
        for p, t in enumerate(row):
            if t == boi_id:
                if count is not None:
                    raise ValueError(f"batch item {b}: a begin-of-image marker at position {p} inside an open image")
                count = 0
            elif t == eoi_id:
                if not count or count % per_tile:
                    raise ValueError(f"batch item {b}: the image closed at position {p} holds {count or 0} image "
                                     f"tokens, not a positive whole number of tiles of {per_tile}; build the prompt "
                                     "with the checkpoint's processor")
                out.append(count // per_tile)
                count = None
            elif t == image_id:
                if count is None:
                    raise ValueError(f"batch item {b}: image token at position {p} outside begin / end-of-image markers")
                count += 1
        if count is not None:
            raise ValueError(f"batch item {b}: an image is opened but never closed (no end-of-image marker)")
    if sum(out) != n_tiles:
        raise ValueError(f"the prompts' images announce {sum(out)} tiles ({out} per image) but pixel_values holds "
                         f"{n_tiles}; use the checkpoint's processor to build the prompt and pixel_values together")
    return out
