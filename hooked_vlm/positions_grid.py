"""Position function ``"xdrope"`` (HunYuanVL's multimodal RoPE; registered in :mod:`hooked_vlm.positions`).

Positions ``[n_axes, batch, pos]`` (``n_axes = len(rope_parameters["mrope_section"])``, 3 or 4). Every token starts at
its 1-D position among the real tokens of its row (``0, 1, ...`` after the left padding; padding gets 0). The grid
tokens of an image (its placeholder run minus the begin / end embeddings at either end) then take, on the last three
axes, (column, row, image index) within the merged grid, the column counting the row-break token (``w / m + 1`` per
row); the image index counts images over the whole batch, in order (HF's ``HunYuanVLModel.get_rope_index``). The
image runs are read from ``mm_token_type_ids`` (1 = image), derived from the image token when absent.
While generating with a KV cache, new tokens continue each axis from the prompt's last position (+1 per step), as
HF's ``generate`` extends its position ids. A forward without images uses ``past + 0, 1, ...`` on every axis (HF's
text-only forward). ``cfg.extra["xdrope"]``: image_token_id, spatial_merge_size, n_axes.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .positions import register_position_fn

if TYPE_CHECKING:
    from .model import HookedVLM, KVCache


@register_position_fn("xdrope")
def xdrope_positions(model: "HookedVLM", tokens: Tensor, attention_mask: Tensor | None, position_ids: Tensor | None,
                     kv_cache: "KVCache | None", extras: dict[str, Any]) -> Tensor:
    spec = model.cfg.extra["xdrope"]
    n_axes = spec["n_axes"]
    b, q_len = tokens.shape
    if position_ids is not None:
        if position_ids.ndim == 3:
            if position_ids.shape[0] != n_axes:
                raise ValueError(f"position_ids must be [{n_axes}, batch, pos] for this model's {n_axes} rotary axes; "
                                 f"got {tuple(position_ids.shape)}")
            return position_ids.to(tokens.device)
        return position_ids.to(tokens.device)[None].expand(n_axes, -1, -1)
    past = kv_cache.length if kv_cache is not None else 0
    if past > 0 and "xdrope_next" in kv_cache.extra:  # HF's generate: the prompt's last position + 1 per new token
        start, at = kv_cache.extra["xdrope_next"], kv_cache.extra["xdrope_at"]
        return start.to(tokens.device) + (past - at) + torch.arange(q_len, device=tokens.device)
    grid = extras.get("image_grid_thw")
    if past > 0 or grid is None:
        positions = torch.arange(past, past + q_len, device=tokens.device).view(1, 1, -1).expand(n_axes, b, -1)
    else:
        types = extras.get("mm_token_type_ids")
        is_image = (tokens == spec["image_token_id"]).long()
        if types is not None:  # generation without a KV cache grows input_ids: the new tokens are text
            given = types.to(tokens.device)[:, :q_len]
            if ((given == 1) != (is_image[:, : given.shape[1]] == 1)).any():
                raise ValueError("mm_token_type_ids does not mark exactly the image tokens of input_ids as images (1)")
        positions = xdrope_index(is_image, attention_mask, torch.as_tensor(grid), spec["spatial_merge_size"], n_axes)
    if kv_cache is not None:
        kv_cache.extra["xdrope_next"] = positions[..., -1:] + 1
        kv_cache.extra["xdrope_at"] = past + q_len
    return positions


def xdrope_index(is_image: Tensor, attention_mask: Tensor | None, image_grid_thw: Tensor, merge: int,
                 n_axes: int) -> Tensor:
    """HF's ``get_rope_index``: positions [n_axes, batch, pos] (0 at padding)."""
    if n_axes < 3:
        raise ValueError(f"xdrope needs at least 3 rotary axes (column, row, image index); got {n_axes}")
    b, length = is_image.shape
    device = is_image.device
    positions = torch.zeros(n_axes, b, length, dtype=torch.long, device=device)
    grids = [tuple(int(v) for v in g) for g in image_grid_thw.tolist()]
    image_index = 0
    for i in range(b):
        real = torch.ones(length, dtype=torch.bool, device=device) if attention_mask is None else attention_mask[i].bool()
        types = is_image[i][real].tolist()
        cur = torch.arange(len(types), device=device).expand(n_axes, -1).clone()
        for kind, group in itertools.groupby(enumerate(types), lambda x: x[1]):
            if kind != 1:
                continue
            group = list(group)
            start, end = group[0][0], group[-1][0] + 1
            if image_index >= len(grids):
                raise ValueError(f"the prompts hold more image placeholder runs than image_grid_thw lists ({len(grids)})")
            _, h, w = grids[image_index]
            rows, cols = h // merge, w // merge + 1  # the row break is a column
            n_grid = rows * cols
            if end - start not in (n_grid, n_grid + 2):
                raise ValueError(f"batch item {i}: an image of grid {grids[image_index]} needs {n_grid + 2} image tokens "
                                 f"(begin, {rows} rows of {cols}, end); the prompt holds a run of {end - start}")
            first = start + 1 if end - start == n_grid + 2 else start
            r, c = torch.meshgrid(torch.arange(rows, device=device), torch.arange(cols, device=device), indexing="ij")
            off = n_axes - 3
            cur[off, first:first + n_grid] = c.flatten()
            cur[off + 1, first:first + n_grid] = r.flatten()
            cur[off + 2, first:first + n_grid] = image_index
            image_index += 1
        positions[:, i, real] = cur
    if image_index != len(grids):
        raise ValueError(f"image_grid_thw lists {len(grids)} images but the prompts hold {image_index}")
    return positions
