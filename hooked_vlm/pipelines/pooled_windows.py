"""Crops of pre-cut patches -> ViT (several layers concatenated) -> attention pooling of patch windows (Molmo 2).

Inputs (the Molmo 2 image processor's): ``pixel_values`` [crop, patch, patch_size**2 * channels] (every crop of
every image of the batch, image by image; [batch, crop, patch, ...] is flattened), ``image_token_pooling`` [token,
window] (the patches each image token pools: indices into the flattened crops x patches, -1 = empty slot),
``image_grids`` [image, 4] = (low-res rows, low-res cols, high-res rows, high-res cols) of the pooled grids and
``image_num_crops`` [image] (optional: checked against ``pixel_values``).

Layout of each image: two pooled grids, the low-resolution view of the whole image first (tile 0, span ``low_res``),
then the high-resolution grid stitched from the overlapping crops (tile 1), each row-major: spans give every image
token its (image, tile, row, col). In the prompt each row is followed by an ``<im_col>`` token (span ``row_break``)
and each grid is wrapped in a start / ``<im_end>`` pair (spans ``low_res_boi`` / ``boi`` / ``eoi``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import einops
import torch

from ..spans import ImageLayout
from .base import register_pipeline

if TYPE_CHECKING:
    from ..model import HookedVLM


def _crops(model: "HookedVLM", pixel_values: torch.Tensor) -> torch.Tensor:
    vcfg = model.cfg.vision
    width = vcfg.patch_size ** 2 * vcfg.n_channels
    if pixel_values.ndim == 4:  # [batch, crop, patch, width] (HF accepts it and flattens it)
        pixel_values = pixel_values.flatten(0, 1)
    if pixel_values.ndim != 3 or tuple(pixel_values.shape[1:]) != (vcfg.n_patches, width):
        raise ValueError(f"pixel_values has shape {tuple(pixel_values.shape)}; this model expects [crop, "
                         f"{vcfg.n_patches}, {width}] (each crop cut into {vcfg.grid_size} x {vcfg.grid_size} patches of "
                         f"{vcfg.patch_size} x {vcfg.patch_size} x {vcfg.n_channels} values: the Molmo 2 image processor's "
                         "output)")
    return pixel_values


def window_layouts(model: "HookedVLM", pixel_values: torch.Tensor, extras: dict) -> list[ImageLayout]:
    """One layout per row of ``image_grids``: the low-res grid (tile 0) then the high-res grid (tile 1)."""
    crops = _crops(model, pixel_values)
    grids, windows = extras.get("image_grids"), extras.get("image_token_pooling")
    if grids is None or windows is None:
        raise ValueError("this model needs image_grids and image_token_pooling beside pixel_values (the Molmo 2 image "
                         "processor's outputs): they say which patches each image token pools")
    grids = torch.as_tensor(grids).reshape(-1, 4).tolist()
    layouts = [ImageLayout(rows=hr, cols=hc, tiles=2, tile_shapes=[(lr, lc), (hr, hc)], low_res=True)
               for lr, lc, hr, hc in grids]
    n_windows = torch.as_tensor(windows).shape[0]
    if sum(layout.n_tokens for layout in layouts) != n_windows:
        raise ValueError(f"image_grids {grids} give {sum(layout.n_tokens for layout in layouts)} image tokens but "
                         f"image_token_pooling has {n_windows} windows; pass the outputs of one processor call")
    num_crops = extras.get("image_num_crops")
    if num_crops is not None and int(torch.as_tensor(num_crops).sum()) != crops.shape[0]:
        raise ValueError(f"image_num_crops says {int(torch.as_tensor(num_crops).sum())} crops but pixel_values holds "
                         f"{crops.shape[0]}; pass the outputs of one processor call")
    return layouts


@register_pipeline("pooled_windows", layouts=window_layouts)
def pooled_windows(model: "HookedVLM", pixel_values: torch.Tensor,
                   extras: dict) -> tuple[torch.Tensor, list[ImageLayout]]:
    layouts = window_layouts(model, pixel_values, extras)
    vcfg = model.cfg.vision
    images = einops.rearrange(_crops(model, pixel_values), "n (gh gw) (py px c) -> n c (gh py) (gw px)",
                              gh=vcfg.grid_size, py=vcfg.patch_size, px=vcfg.patch_size, c=vcfg.n_channels)
    features = model.vision(images)  # [crop, patch, d_vision * n_feature_layers]
    return model.projector(features, torch.as_tensor(extras["image_token_pooling"])), layouts
