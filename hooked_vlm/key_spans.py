"""KeySpans: the role of every cross-attention KEY (models whose image lives only in the keys: Mllama).

``cache.spans`` describes the text positions (span ``image`` = the ``<|image|>`` placeholders, one position per
image); ``cache.kv_spans`` describes the key axis every cross-attention layer attends over (``cross_attn.hook_k`` /
``hook_v`` / ``hook_pattern``'s last axis, ``hook_image_embeds``' second): key = (image slot, tile, position) flattened
in that order, ``per_tile`` positions per tile (position 0 the tile's class token, then the patches row-major on a
``grid`` x ``grid`` patch grid).

Masks [batch, key]: ``image`` (keys of the real tiles of real images: class tokens and patches), ``patch``, ``cls``,
``image.{i}`` (real image i of the batch item, in prompt order), ``tile.{t}``, ``padding`` (keys of padding tiles and of
padding image slots: the processor pads every row to the same images x max tiles; the tower still computes them).
``grid`` [batch, key, 4] = (image, tile, row, col), -1 where there is none (row / col -1 at class tokens; all -1 at
padding). ``tile_grids[b][i]`` = (tile rows, tile cols) of image i (its aspect ratio): tile t sits at
(t // cols, t % cols) of the image, as the processor cut it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .spans import NamedMasks


@dataclass
class KeySpans(NamedMasks):
    masks: dict[str, Tensor]
    grid: Tensor
    tile_grids: list[list[tuple[int, int]]]
    patch_grid: int  # patches per tile side
    per_tile: int  # keys per tile (class token + patch_grid ** 2)

    _kind = "key span"

    @property
    def n_keys(self) -> int:
        return int(self.grid.shape[1])

    def select(self, items: list[int]) -> "KeySpans":
        """The key spans of batch items ``items`` (in that order): a batch slice of a cache slices its key axis alike."""
        idx = torch.as_tensor(items, dtype=torch.long, device=self.grid.device)
        return KeySpans({name: m[idx] for name, m in self.masks.items()}, self.grid[idx],
                        [self.tile_grids[i] for i in items], self.patch_grid, self.per_tile)

    def to_grid(self, values: Tensor, image: int = 0, batch: int = 0, tile: int | None = None) -> Tensor:
        """Per-key ``values`` ([key] or [key, ...]) of one image on its patch grid: one tile -> [grid, grid, ...];
        ``tile=None`` -> the whole image, tiles placed as the processor cut them -> [tile_rows * grid,
        tile_cols * grid, ...]. Class tokens have no cell (read them with ``positions('cls')``)."""
        if values.shape[0] != self.n_keys:
            raise ValueError(f"values has {values.shape[0]} entries on its first axis; the key axis has {self.n_keys} "
                             "(pass one batch item's per-key values, e.g. pattern[b, head, q].)")
        if not 0 <= batch < self.batch or not 0 <= image < len(self.tile_grids[batch]):
            raise ValueError(f"batch item {batch} has no image {image} (images per item: "
                             f"{[len(t) for t in self.tile_grids]})")
        t_rows, t_cols = self.tile_grids[batch][image]
        g = self.grid[batch]
        if tile is not None and not 0 <= tile < t_rows * t_cols:
            raise ValueError(f"image {image} of batch item {batch} has {t_rows * t_cols} tiles, not tile {tile}")
        sel = (g[:, 0] == image) & (g[:, 2] >= 0) & ((g[:, 1] == tile) if tile is not None else True)
        rows, cols = g[sel, 2].cpu(), g[sel, 3].cpu()
        if tile is None:  # place each tile on the image's tile grid
            rows = rows + (g[sel, 1].cpu() // t_cols) * self.patch_grid
            cols = cols + (g[sel, 1].cpu() % t_cols) * self.patch_grid
            shape = (t_rows * self.patch_grid, t_cols * self.patch_grid)
        else:
            shape = (self.patch_grid, self.patch_grid)
        out = torch.full((*shape, *values.shape[1:]), float("nan"), dtype=torch.float32)
        out[rows, cols] = values[sel.to(values.device)].float().cpu()
        return out


def build_key_spans(aspect_ratio_ids: Tensor, aspect_ratio_mask: Tensor, supported_aspect_ratios: list,
                    patch_grid: int) -> KeySpans:
    """Key spans from the processor's ``aspect_ratio_ids`` [batch, images] (0 = padding slot) and
    ``aspect_ratio_mask`` [batch, images, tiles]."""
    b, n_img, n_tiles = aspect_ratio_mask.shape
    per_tile = patch_grid**2 + 1
    device = aspect_ratio_ids.device
    ids, tmask = aspect_ratio_ids.tolist(), aspect_ratio_mask.bool().tolist()
    grid = torch.full((b, n_img, n_tiles, per_tile, 4), -1, dtype=torch.long)
    real = torch.zeros(b, n_img, n_tiles, per_tile, dtype=torch.bool)
    image_masks: dict[str, Tensor] = {}
    tile_grids: list[list[tuple[int, int]]] = []
    cell = torch.arange(patch_grid**2)
    for r in range(b):
        grids, i = [], 0
        for slot in range(n_img):
            if ids[r][slot] <= 0:
                continue
            grids.append(tuple(supported_aspect_ratios[ids[r][slot] - 1]))
            for t in range(n_tiles):
                if not tmask[r][slot][t]:
                    continue
                real[r, slot, t] = True
                grid[r, slot, t, :, 0], grid[r, slot, t, :, 1] = i, t
                grid[r, slot, t, 1:, 2], grid[r, slot, t, 1:, 3] = cell // patch_grid, cell % patch_grid
            image_masks.setdefault(f"image.{i}", torch.zeros(b, n_img, n_tiles, per_tile, dtype=torch.bool))
            image_masks[f"image.{i}"][r, slot] = real[r, slot]
            i += 1
        tile_grids.append(grids)
    is_cls = torch.zeros(per_tile, dtype=torch.bool)
    is_cls[0] = True
    tiles = {f"tile.{t}": real & (torch.arange(n_tiles)[None, None, :, None] == t) for t in range(n_tiles)}
    masks = {"image": real, "cls": real & is_cls, "patch": real & ~is_cls, "padding": ~real, **image_masks, **tiles}
    flat = {name: m.reshape(b, -1).to(device) for name, m in masks.items()}
    return KeySpans(flat, grid.reshape(b, -1, 4).to(device), tile_grids, patch_grid, per_tile)
