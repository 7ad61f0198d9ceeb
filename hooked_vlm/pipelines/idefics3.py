"""Idefics3 / SmolVLM: image tiles -> NaViT SigLIP tower -> pixel shuffle + linear, tiles grouped per image.

``pixel_values`` [batch, max_tiles, C, H, W]: each image of the prompt is split into R x C tiles
plus a downscaled global image (or is just the global image); all-zero entries are batch padding
and are dropped, as HF does. ``pixel_attention_mask`` [batch, max_tiles, H, W] marks real pixels.
Every tile gives ``side x side`` LM tokens. Tiles are grouped into images with the marker tokens
of ``input_ids``: an image is the tiles announced by ``<row_r_col_c>`` markers, ending with the
one announced by ``<global-img>``; its layout has one tile per tile, the global image last
(tile t < R * C sits at tile row t // C, tile col t % C). Without known markers
(``cfg.extra["idefics3_markers"]`` empty) every tile counts as its own image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..spans import ImageLayout
from .base import register_pipeline

if TYPE_CHECKING:
    from ..model import HookedVLM


def idefics3_layouts(model: "HookedVLM", pixel_values: torch.Tensor, extras: dict) -> list[ImageLayout]:
    """Per image, its tiles (from the marker tokens), each a (H / patch / scale)-sided grid."""
    _, _, real_per_item = real_tiles(model, pixel_values, extras, partial_patches="any")
    side = pixel_values.shape[-2] // model.cfg.vision.patch_size // model.cfg.projector.extra["scale_factor"]
    tiles_per_image = _tiles_per_image(model, extras.get("input_ids"), real_per_item)
    return [ImageLayout(rows=side, cols=side, tiles=t) for t in tiles_per_image]


@register_pipeline("idefics3", layouts=idefics3_layouts)
def idefics3(model: "HookedVLM", pixel_values: torch.Tensor, extras: dict) -> tuple[torch.Tensor, list[ImageLayout]]:
    layouts = idefics3_layouts(model, pixel_values, extras)
    flat, patch_mask, _ = real_tiles(model, pixel_values, extras, partial_patches="any")
    embeds = model.projector(model.vision(flat, patch_mask))  # [tile, tokens, d_model]
    return embeds.reshape(-1, embeds.shape[-1]), layouts


def real_tiles(model: "HookedVLM", pixel_values: torch.Tensor, extras: dict,
               partial_patches: str) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """[batch, tiles, C, H, W] -> (the real tiles [n, C, H, W], their patch masks [n, H / p, W / p], real tiles per item).

    ``partial_patches``: a patch only partly covered by ``pixel_attention_mask`` is real with "any" (HF Idefics3: any
    real pixel) or padding with "all" (HF Idefics2: every pixel real; then H and W need not be multiples of the patch
    size: the conv and the mask both drop the remainder, as HF's do)."""
    vcfg = model.cfg.vision
    if pixel_values.ndim == 4:
        pixel_values = pixel_values[None]
    if pixel_values.ndim != 5 or pixel_values.shape[2] != vcfg.n_channels:
        raise ValueError(f"pixel_values has shape {tuple(pixel_values.shape)}; this model expects "
                         f"[batch, tiles, {vcfg.n_channels}, height, width] (the Idefics image processor's output)")
    b, n_tiles = pixel_values.shape[:2]
    flat = pixel_values.reshape(b * n_tiles, *pixel_values.shape[2:])
    real = (flat != 0).flatten(1).any(-1)  # all-zero tiles are batch padding (HF's rule)
    real_per_item = real.view(b, n_tiles).sum(1).tolist()
    pixel_mask = extras.get("pixel_attention_mask")
    if pixel_mask is None:
        pixel_mask = torch.ones(flat.shape[0], *flat.shape[2:], dtype=torch.bool, device=flat.device)
    else:
        pixel_mask = pixel_mask.to(flat.device).reshape(b * n_tiles, *pixel_mask.shape[2:])
    p = vcfg.patch_size
    if partial_patches == "any" and (flat.shape[-1] % p or flat.shape[-2] % p):
        raise ValueError(f"image height and width must be multiples of the patch size {p}; got {tuple(flat.shape[-2:])}")
    flat, pixel_mask = flat[real], pixel_mask[real]
    covered = pixel_mask.unfold(1, p, p).unfold(2, p, p).sum(dim=(-1, -2))
    patch_mask = covered > 0 if partial_patches == "any" else covered == p * p
    return flat, patch_mask, real_per_item


def _tiles_per_image(model: "HookedVLM", input_ids: torch.Tensor | None, real_per_item: list[int]) -> list[int]:
    markers = model.cfg.extra.get("idefics3_markers") or {}
    tile_ids, global_id = set(markers.get("tiles", ())), markers.get("global")
    if input_ids is None or global_id is None:
        return [1] * sum(real_per_item)
    out = []
    for b, n_real in enumerate(real_per_item):
        counts, pending = [], 0
        for t in input_ids[b].tolist():
            if t in tile_ids:
                pending += 1
            elif t == global_id:
                counts.append(pending + 1)
                pending = 0
        if pending or sum(counts) != n_real:
            raise ValueError(f"batch item {b}: the prompt's image markers announce {sum(counts) + pending} tiles "
                             f"but pixel_values holds {n_real}; use the checkpoint's processor to build the prompt")
        out += counts
    return out
