"""Tiled images read by cross-attention (Mllama): pixels -> tiled ViT -> linear projector -> the KEY axis.

Inputs (the processor's): ``pixel_values`` [batch, images, tiles, C, H, W] (padding images and padding tiles
included), ``aspect_ratio_ids`` [batch, images] (0 = a padding image slot), ``aspect_ratio_mask`` [batch, images,
tiles] (1 = real tile). Output: the image features the cross-attention layers read as keys / values,
[batch, key, d_model] with key = (image, tile, position) flattened in that order (position 0 the tile's class token,
then the patches row-major), and one :class:`ImageLayout` per real image for the TEXT spans: each ``<|image|>``
placeholder is one position (span ``image``, no grid cell: the image's content is not in the text stream).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..spans import ImageLayout
from .base import register_pipeline

if TYPE_CHECKING:
    from ..model import HookedVLM


def _checked(model: "HookedVLM", pixel_values: torch.Tensor, extras: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(aspect_ratio_ids [batch, images], aspect_ratio_mask [batch, images, tiles]) after checking the inputs."""
    vcfg = model.cfg.vision
    ids, tile_mask = extras.get("aspect_ratio_ids"), extras.get("aspect_ratio_mask")
    if pixel_values.ndim != 6 or tuple(pixel_values.shape[3:]) != (vcfg.n_channels, vcfg.image_size, vcfg.image_size):
        raise ValueError(f"pixel_values has shape {tuple(pixel_values.shape)}; this model takes [batch, images, tiles, "
                         f"{vcfg.n_channels}, {vcfg.image_size}, {vcfg.image_size}] (the checkpoint's processor "
                         "writes it, with aspect_ratio_ids and aspect_ratio_mask)")
    b, n_img, n_tiles = pixel_values.shape[:3]
    if ids is None or tuple(ids.shape) != (b, n_img):
        raise ValueError(f"aspect_ratio_ids must be given with pixel_values, shape [batch, images] = {(b, n_img)}; got "
                         f"{None if ids is None else tuple(ids.shape)}")
    if tile_mask is None:
        tile_mask = torch.ones(b, n_img, n_tiles, dtype=torch.long)  # HF: every tile real when no mask is given
    if tuple(tile_mask.shape) != (b, n_img, n_tiles):
        raise ValueError(f"aspect_ratio_mask has shape {tuple(tile_mask.shape)}; expected [batch, images, tiles] = "
                         f"{(b, n_img, n_tiles)}")
    return ids, tile_mask


def cross_attention_tiles_layouts(model: "HookedVLM", pixel_values: torch.Tensor, extras: dict) -> list[ImageLayout]:
    """One layout per real image (aspect_ratio_ids > 0): its ``<|image|>`` placeholder, one position, no grid cell."""
    ids, _ = _checked(model, pixel_values, extras)
    return [ImageLayout(rows=0, cols=0, n_prefix=1) for row in ids.tolist() for i in row if i > 0]


@register_pipeline("cross_attention_tiles", layouts=cross_attention_tiles_layouts)
def cross_attention_tiles(model: "HookedVLM", pixel_values: torch.Tensor,
                          extras: dict) -> tuple[torch.Tensor, list[ImageLayout]]:
    ids, tile_mask = _checked(model, pixel_values, extras)
    b, n_img, n_tiles = pixel_values.shape[:3]
    layouts = cross_attention_tiles_layouts(model, pixel_values, extras)
    ids = ids.to(model.device)
    feats = model.vision(pixel_values.flatten(0, 1), ids.flatten(), tile_mask.flatten(0, 1))  # [b*img, tile, pos, d]
    keys = model.projector(feats)  # [b*img, tile, pos, d_model]
    keys = keys.reshape(b, n_img * n_tiles * keys.shape[2], keys.shape[-1])
    return keys, layouts


def key_axis_mask(cross_attention_mask: torch.Tensor, per_tile: int) -> torch.Tensor:
    """The processor's ``cross_attention_mask`` [batch, text_pos, images, tiles] (1 = the text position may see the
    tile) -> bool [batch, text_pos, key], one entry per key (each tile's ``per_tile`` positions share its value)."""
    if cross_attention_mask.ndim != 4:
        raise ValueError(f"cross_attention_mask must be [batch, text_pos, images, tiles], got shape "
                         f"{tuple(cross_attention_mask.shape)}")
    return cross_attention_mask.bool().repeat_interleave(per_tile, dim=3).flatten(2)


def begin_cross_attention(model: "HookedVLM", states: list, images: torch.Tensor | None,
                          cross_attention_mask: torch.Tensor | None, past: int, q_len: int) -> list:
    """The per-layer states of one forward with this forward's image keys and mask rows set in every cross-attention
    layer's :class:`~hooked_vlm.components.cross_attention.CrossKV` (a fresh one per layer without a KV cache).

    ``cross_attention_mask`` may hold the rows of this forward's positions, of all positions so far (past + new:
    sliced, as HF's forward does), or fewer rows than positions (generation without a cache: the last row is
    repeated for the new tokens, as HF's generate does)."""
    from ..components.cross_attention import CrossKV

    allowed = None
    if cross_attention_mask is not None:
        cam = cross_attention_mask.to(model.device)
        rows = cam.shape[1] if cam.ndim == 4 else -1
        if past and rows == past + q_len:
            cam = cam[:, past:]
        elif 0 < rows < q_len and past == 0:
            cam = torch.cat([cam, cam[:, -1:].expand(-1, q_len - rows, -1, -1)], dim=1)
        elif rows != q_len:
            raise ValueError(f"cross_attention_mask has shape {tuple(cam.shape)}; for {q_len} new positions after "
                             f"{past} cached ones it must be [batch, {q_len} (or {past + q_len}), images, tiles]")
        allowed = key_axis_mask(cam, model.cfg.vision.n_patches + 1)
        if images is not None and allowed.shape[-1] != images.shape[1]:
            raise ValueError(f"cross_attention_mask covers {cam.shape[2]} images x {cam.shape[3]} tiles = "
                             f"{allowed.shape[-1]} keys, but pixel_values gives {images.shape[1]} keys; give the "
                             "mask and the images from the same processor call")
    out = list(states)
    for l, kind in enumerate(model.cfg.text.layer_types or ()):
        if kind != "cross_attention":
            continue
        if out[l] is None:
            out[l] = CrossKV()
        out[l].begin(images, allowed, q_len)
    return out


def key_spans_for(model: "HookedVLM", extras: dict):
    """The :class:`~hooked_vlm.key_spans.KeySpans` of this forward's image keys (from its aspect-ratio inputs)."""
    from ..key_spans import build_key_spans

    ids = extras["aspect_ratio_ids"]
    tile_mask = extras.get("aspect_ratio_mask")
    vcfg = model.cfg.vision
    if tile_mask is None:
        tile_mask = torch.ones(*ids.shape, vcfg.extra["max_num_tiles"], dtype=torch.long)
    return build_key_spans(ids.to(model.device), tile_mask.to(model.device), vcfg.extra["supported_aspect_ratios"],
                           vcfg.grid_size)
