"""Ovis 2: a thumbnail, then a grid of crops, each crop a fixed-size ViT image; the prompt marks the grid.

``pixel_values`` [n_crops_total, C, image_size, image_size]: every image of the batch in prompt order; an image cut
into a ``rows x cols`` grid of crops (``rows * cols > 1``) gives first a thumbnail (the whole image resized to one crop),
then its crops row-major; an image of one crop gives that crop alone. Every crop is ``side x side`` LM tokens (``side``
= patch grid / ``hidden_stride``).

The processor writes, per image (HF ``Ovis2Processor.replace_image_token``)::

    <IMG_START> crop tokens of the thumbnail <IMG_GRID> [crop (0, 0) <IMG_COL> crop (0, 1) ... <IMG_ROW> crop (1, 0) ...] <IMG_END>

(the bracketed part only when the grid has more than one crop), so the layouts come from ``input_ids`` alone: the
begin / end markers delimit an image, the row and column separators give the grid's shape. The marker ids are
``roles.boi_token_id`` / ``eoi_token_id`` and ``roles.extra["grid_marker" | "crop_col_break" | "crop_row_break"]``.
Layouts: one tile per crop, the thumbnail first (span ``thumbnail``, ``ImageLayout.thumbnail_first``), and the crop
grid in ``ImageLayout.tile_grid``: tile ``1 + k`` is crop ``(k // cols, k % cols)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..spans import ImageLayout
from .base import check_square_pixels, register_pipeline

if TYPE_CHECKING:
    from ..model import HookedVLM

FIX = "build the prompt with the checkpoint's processor (it expands each <image> into the marked crop layout)"


def _marker(roles, name: str) -> int:
    ids = roles.extra.get(name, ())
    if len(ids) != 1:
        raise ValueError(f"the thumbnail_grid pipeline needs one {name!r} token id in TokenRoles.extra; got {ids}")
    return ids[0]


def thumbnail_grid_layouts(model: "HookedVLM", pixel_values: torch.Tensor, extras: dict) -> list[ImageLayout]:
    """Per image: its crops (thumbnail first when the grid has more than one), each a (grid / stride)-sided grid."""
    check_square_pixels(model, pixel_values)
    side = model.cfg.vision.grid_size // model.cfg.projector.extra["hidden_stride"]
    input_ids = extras.get("input_ids")
    if input_ids is None:
        raise ValueError("the thumbnail_grid pipeline reads each image's crop grid from input_ids; pass input_ids")
    roles = model.cfg.roles
    layouts = [_image_layout(b, p, tokens, side) for b, row in enumerate(input_ids.tolist())
               for p, tokens in _images(b, row, roles)]
    n_crops = sum(layout.tiles for layout in layouts)
    if n_crops != pixel_values.shape[0]:
        raise ValueError(f"the prompts' images announce {n_crops} crops ({[l.tiles for l in layouts]} per image) but "
                         f"pixel_values holds {pixel_values.shape[0]}; {FIX}")
    return layouts


def _images(b: int, row: list[int], roles) -> list[tuple[int, list[str]]]:
    """Per image of one prompt: (its begin position, its tokens as roles: 'img', 'grid', 'col', 'row')."""
    names = {roles.image_token_id: "img", _marker(roles, "grid_marker"): "grid",
             _marker(roles, "crop_col_break"): "col", _marker(roles, "crop_row_break"): "row"}
    out: list[tuple[int, list[str]]] = []
    current: list[str] | None = None
    for p, t in enumerate(row):
        if t == roles.boi_token_id:
            if current is not None:
                raise ValueError(f"batch item {b}: a begin-of-image marker at position {p} inside an open image; {FIX}")
            current = []
            out.append((p, current))
        elif t == roles.eoi_token_id:
            if current is None:
                raise ValueError(f"batch item {b}: an end-of-image marker at position {p} with no image open; {FIX}")
            current = None
        elif t in names:
            if current is None:
                raise ValueError(f"batch item {b}: image token or crop marker at position {p} outside the "
                                 f"begin / end-of-image markers; {FIX}")
            current.append(names[t])
    if current is not None:
        raise ValueError(f"batch item {b}: an image is opened but never closed (no end-of-image marker); {FIX}")
    return out


def _image_layout(b: int, start: int, tokens: list[str], side: int) -> ImageLayout:
    """One image's layout from its token roles: thumbnail run, grid marker, then crops split by col / row markers."""
    per = side * side
    runs, seps, run = [], [], 0  # image-token runs and the separator after each
    for t in tokens + ["end"]:
        if t == "img":
            run += 1
        else:
            runs.append(run)
            seps.append(t)
            run = 0
    where = f"batch item {b}, the image at position {start}"
    if runs[0] != per or seps[0] != "grid":
        raise ValueError(f"{where}: it must open with the thumbnail's {per} image tokens then the grid marker (got a run "
                         f"of {runs[0]} then {seps[0]!r}); {FIX}")
    if runs[1:] == [0]:  # <IMG_START> crop <IMG_GRID> <IMG_END>: a grid of one crop, the image itself
        return ImageLayout(rows=side, cols=side, tiles=1, tile_grid=(1, 1))
    crops = runs[1:]
    if any(r != per for r in crops) or "grid" in seps[1:]:
        raise ValueError(f"{where}: crop runs of {crops} image tokens (separators {seps[1:-1]}); every crop is {per} "
                         f"tokens and the grid marker comes once; {FIX}")
    between = seps[1:-1]  # the separators between crops ('col' / 'row'); seps[-1] is the end
    n_rows = between.count("row") + 1
    n_crops = len(crops)
    if n_crops % n_rows or between.count("col") != n_rows * (n_crops // n_rows - 1) or n_crops < 2:
        raise ValueError(f"{where}: {n_crops} crops with {between.count('row')} row and {between.count('col')} column "
                         f"separators do not form a grid of more than one crop; {FIX}")
    n_cols = n_crops // n_rows
    expected = ["row" if (k + 1) % n_cols == 0 else "col" for k in range(n_crops - 1)]
    if between != expected:
        raise ValueError(f"{where}: crop separators {between} are not those of a {n_rows} x {n_cols} grid; {FIX}")
    return ImageLayout(rows=side, cols=side, tiles=1 + n_crops, thumbnail=True, thumbnail_first=True,
                       tile_grid=(n_rows, n_cols))


@register_pipeline("thumbnail_grid", layouts=thumbnail_grid_layouts)
def thumbnail_grid(model: "HookedVLM", pixel_values: torch.Tensor, extras: dict) -> tuple[torch.Tensor, list[ImageLayout]]:
    layouts = thumbnail_grid_layouts(model, pixel_values, extras)
    embeds = model.projector(model.vision(pixel_values))  # [crop, tokens_per_crop, d_model]
    return embeds.reshape(-1, embeds.shape[-1]), layouts
