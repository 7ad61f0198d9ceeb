"""LLaVA-NeXT / OneVision "anyres": a base view + high-resolution tiles, unpadded, one newline per row.

Every image is a base view (tile 0, grid g x g) and, when tiled, the crops of its best-fitting
resolution stitched back into one grid, the padding the processor added cut away (and, with an
``anyres_max_N`` aspect setting, shrunk by bilinear interpolation exactly as HF does): tile 1, grid
rows x cols. Each row of tile 1 is followed by the ``image_newline`` embedding, written into an image
placeholder; those positions get the span role ``row_break`` (``ImageLayout.newline_offsets``).
Images that are not tiled (OneVision multi-image prompts) are the base view plus one newline.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from transformers.image_processing_utils import select_best_resolution

from ..spans import ImageLayout
from .base import register_pipeline

if TYPE_CHECKING:
    from ..model import HookedVLM


def tile_grid(image_size: tuple[int, int], pinpoints: list, tile: int) -> tuple[int, int]:
    """(rows, cols) of crops of the resolution the processor picked for an (H, W) image."""
    height, width = select_best_resolution(list(image_size), pinpoints)
    return height // tile, width // tile


def unpad_bounds(cur_h: int, cur_w: int, image_size: tuple[int, int]) -> tuple[slice, slice]:
    """The rows and columns of a cur_h x cur_w feature grid that are not the processor's letterbox padding."""
    orig_h, orig_w = image_size
    if orig_w / orig_h > cur_w / cur_h:
        new_h = int(round(orig_h * (cur_w / orig_w), 7))
        pad = (cur_h - new_h) // 2
        return slice(pad, cur_h - pad), slice(0, cur_w)
    new_w = int(round(orig_w * (cur_h / orig_h), 7))
    pad = (cur_w - new_w) // 2
    return slice(0, cur_h), slice(pad, cur_w - pad)


def unpad(x: Float[Tensor, "d h w"], image_size: tuple[int, int]) -> Float[Tensor, "d h2 w2"]:
    """Cut the processor's letterbox padding off a [d, H, W] feature grid (HF's unpad_image)."""
    rows, cols = unpad_bounds(x.shape[1], x.shape[2], image_size)
    return x[:, rows, cols]


def shrunk_shape(h: int, w: int, max_tiles: int, g: int) -> tuple[int, int]:
    """The grid shape after OneVision's ``anyres_max_N`` downscale (unchanged below ~N tiles)."""
    ratio = math.sqrt(h * w / (max_tiles * g**2))
    return (int(h // ratio), int(w // ratio)) if ratio > 1.1 else (h, w)


def shrink(x: Float[Tensor, "d h w"], max_tiles: int, g: int) -> Float[Tensor, "d h2 w2"]:
    """OneVision's ``anyres_max_N``: bilinear downscale of a [d, H, W] grid larger than ~N tiles."""
    _, h, w = x.shape
    shape = shrunk_shape(h, w, max_tiles, g)
    if shape != (h, w):
        x = F.interpolate(x[None], list(shape), mode="bilinear")[0]
    return x


def _plan(model: "HookedVLM", pixel_values: Tensor, extras: dict) -> tuple[list[tuple[int, int]], list[bool], list[int]]:
    """(each image's (height, width), whether it is tiled, its number of tiles incl. the base view), checked against
    pixel_values."""
    vcfg, ex = model.cfg.vision, model.cfg.extra
    if extras.get("image_sizes") is None:
        raise ValueError("this model needs image_sizes [n_images, 2] (height, width) with pixel_values; "
                         "use model.prepare_inputs or the checkpoint's processor")
    sizes = [(int(h), int(w)) for h, w in torch.as_tensor(extras["image_sizes"]).tolist()]
    per_item = extras.get("batch_num_images")
    if per_item is not None and ex.get("multi_image_base_only"):
        tiled = [int(k) == 1 for k in torch.as_tensor(per_item).tolist() for _ in range(int(k))]
    else:
        tiled = [True] * len(sizes)
    pinpoints, tile = ex["image_grid_pinpoints"], vcfg.image_size
    n_tiles = [math.prod(tile_grid(s, pinpoints, tile)) + 1 if t else 1 for s, t in zip(sizes, tiled)]
    if pixel_values.ndim == 5:  # [n_images, max_tiles, C, H, W]: each image's first n_tiles entries are its tiles
        n_given = sum(min(len(pv), n) for pv, n in zip(pixel_values, n_tiles))
    else:
        n_given = pixel_values.shape[0] if pixel_values.ndim == 4 else -1
    if n_given != sum(n_tiles) or pixel_values.shape[-1] != tile:
        raise ValueError(f"pixel_values has shape {tuple(pixel_values.shape)}; for image_sizes {sizes} this model "
                         f"expects {sum(n_tiles)} tiles of {vcfg.n_channels}x{tile}x{tile} "
                         "([n_images, max_tiles, C, H, W] as the processor pads them, or the tiles stacked)")
    return sizes, tiled, n_tiles


def anyres_layouts(model: "HookedVLM", pixel_values: Tensor, extras: dict) -> list[ImageLayout]:
    """Base view g x g, then (when tiled) the unpadded (and shrunk) high-resolution grid, one newline per row."""
    sizes, tiled, n_tiles = _plan(model, pixel_values, extras)
    ex, g, tile = model.cfg.extra, model.cfg.vision.grid_size, model.cfg.vision.image_size
    layouts = []
    for size, n in zip(sizes, n_tiles):
        if n == 1:
            layouts.append(ImageLayout(rows=g, cols=g, newline_offsets=[g * g]))
            continue
        rows, cols = tile_grid(size, ex["image_grid_pinpoints"], tile)
        r, c = unpad_bounds(rows * g, cols * g, size)
        h, w = r.stop - r.start, c.stop - c.start
        if ex.get("vision_aspect_ratio"):
            h, w = shrunk_shape(h, w, int(ex["vision_aspect_ratio"].strip("anyres_max_")), g)
        layouts.append(ImageLayout(rows=g, cols=g, tiles=2, tile_shapes=[(g, g), (h, w)],
                                   newline_offsets=[g * g + k * (w + 1) + w for k in range(h)]))
    return layouts


@register_pipeline("anyres", layouts=anyres_layouts)
def anyres(model: "HookedVLM", pixel_values: Float[Tensor, "..."], extras: dict) -> tuple[Float[Tensor, "n d_model"], list[ImageLayout]]:
    vcfg, ex = model.cfg.vision, model.cfg.extra
    sizes, tiled, n_tiles = _plan(model, pixel_values, extras)
    pinpoints, tile, g = ex["image_grid_pinpoints"], vcfg.image_size, vcfg.grid_size
    if pixel_values.ndim == 5:
        pixel_values = torch.cat([pv[:n] for pv, n in zip(pixel_values, n_tiles)], 0)
    feats = model.projector(model.vision(pixel_values))  # [tiles, g*g, d_model]
    if feats.shape[1] != g * g:
        raise ValueError(f"the vision tower gives {feats.shape[1]} tokens per tile; the anyres layout needs {g * g}")
    newline = model.projector.image_newline
    out, layouts = [], []
    for chunk, size in zip(feats.split(n_tiles), sizes):
        d = chunk.shape[-1]
        if chunk.shape[0] == 1:
            out.append(torch.cat([chunk[0], newline[None].to(chunk)], 0))
            layouts.append(ImageLayout(rows=g, cols=g, newline_offsets=[g * g]))
            continue
        rows, cols = tile_grid(size, pinpoints, tile)
        x = chunk[1:].view(rows, cols, g, g, d).permute(4, 0, 2, 1, 3).flatten(1, 2).flatten(2, 3)  # [d, H, W]
        x = unpad(x, size)
        if ex.get("vision_aspect_ratio"):
            x = shrink(x, int(ex["vision_aspect_ratio"].strip("anyres_max_")), g)
        _, h, w = x.shape
        x = torch.cat([x, newline[:, None, None].to(x).expand(d, h, 1)], -1).flatten(1, 2).transpose(0, 1)
        out.append(torch.cat([chunk[0], x], 0))
        layouts.append(ImageLayout(rows=g, cols=g, tiles=2, tile_shapes=[(g, g), (h, w)],
                                   newline_offsets=[g * g + r * (w + 1) + w for r in range(h)]))
    return torch.cat(out, 0), layouts
