"""Position-id functions for language models whose rotary positions are not ``0, 1, 2, ...``.

A model opts in with ``cfg.extra["position_fn"] = name``; :meth:`HookedVLM.forward` then calls
``POSITION_FNS[name](model, tokens, attention_mask, position_ids, kv_cache, extras)`` and feeds the
result to the rotary embedding. Adding one = a function here registered with :func:`register_position_fn`.

``"mrope"`` (Qwen2-VL, Qwen2.5-VL): 3-D positions [3, batch, pos] (temporal, height, width). Text
tokens advance all three together; the tokens of an image of ``t x h x w`` merged patches get
``(start + t_i, start + row, start + col)``; the text after it resumes at ``start + max(h, w)``.
This is HF's ``get_rope_index`` for images. While generating with a KV cache the new tokens get
``text position + rope delta`` (HF's ``rope_deltas``), with the deltas kept in the KV cache.
Given [3, batch, pos] position_ids are used as they are; given [batch, pos] ones are read as TEXT
positions (what ``generate`` passes): at the prompt of a sequence with images the 3-D positions are
always computed from the tokens (HF would silently use 1-D positions there).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch
from jaxtyping import Int
from torch import Tensor

if TYPE_CHECKING:
    from .model import HookedVLM, KVCache

PositionFn = Callable[..., Tensor]
POSITION_FNS: dict[str, PositionFn] = {}


def register_position_fn(name: str) -> Callable[[PositionFn], PositionFn]:
    def deco(fn: PositionFn) -> PositionFn:
        POSITION_FNS[name] = fn
        return fn

    return deco


def _text_positions(tokens: Tensor, position_ids: Tensor | None, past: int) -> Tensor:
    if position_ids is not None:
        return position_ids.to(tokens.device)
    b, q_len = tokens.shape
    return torch.arange(past, past + q_len, device=tokens.device)[None].expand(b, -1)


@register_position_fn("mrope")
def mrope_positions(
    model: "HookedVLM",
    tokens: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch key_pos"] | None,  # key_pos = past + pos while generating with a KV cache
    position_ids: Tensor | None,
    kv_cache: "KVCache | None",
    extras: dict[str, Any],
) -> Int[Tensor, "3 batch pos"]:
    """3-D M-RoPE positions; cfg.extra["mrope"] holds image_token_id, video_token_id, spatial_merge_size."""
    if position_ids is not None and position_ids.ndim == 3:
        if position_ids.shape[0] != 3:
            raise ValueError(f"3-D position_ids must be [3, batch, pos] (temporal, height, width); got {tuple(position_ids.shape)}")
        return position_ids.to(tokens.device)
    past = kv_cache.length if kv_cache is not None else 0
    if past > 0:  # continuing a generation: text positions shifted by the prompt's rope deltas
        deltas = kv_cache.extra.get("rope_deltas")
        text = _text_positions(tokens, position_ids, past)
        if deltas is not None:
            text = text + deltas.to(text.device)
        return text[None].expand(3, -1, -1)
    spec = model.cfg.extra["mrope"]
    # without a KV cache generate reruns prompt + generated tokens: positions beyond the prompt's mm_token_type_ids
    # are generated text (as HF's cached generation treats them), whatever their ids
    types = extras.get("mm_token_type_ids")
    prompt = tokens.shape[1] if types is None else min(types.shape[1], tokens.shape[1])
    if (tokens[:, :prompt] == spec["video_token_id"]).any():
        raise ValueError("the prompt holds video tokens; videos are not supported (images only)")
    is_image = tokens == spec["image_token_id"]
    is_image[:, prompt:] = False
    if not is_image.any():
        positions = _text_positions(tokens, position_ids, 0)[None].expand(3, -1, -1)
        deltas = torch.zeros(tokens.shape[0], 1, dtype=torch.long, device=tokens.device)
    else:
        grid = extras.get("image_grid_thw")
        if grid is None:
            raise ValueError("the prompt holds image tokens but no image_grid_thw was given; M-RoPE positions need "
                             "each image's grid (pass the image processor's output, e.g. model.prepare_inputs(...))")
        _check_token_types(is_image, extras.get("mm_token_type_ids"), attention_mask)
        positions, deltas = rope_index(tokens, attention_mask, is_image, grid, spec["spatial_merge_size"])
    if kv_cache is not None:
        kv_cache.extra["rope_deltas"] = deltas
    return positions


def _check_token_types(is_image: Tensor, mm_token_type_ids: Tensor | None, attention_mask: Tensor | None) -> None:
    """mm_token_type_ids (HF's 0 text / 1 image / 2 video) must agree with the image tokens where both exist."""
    if mm_token_type_ids is None:
        return
    n = min(mm_token_type_ids.shape[1], is_image.shape[1])  # generation without a KV cache grows input_ids
    given = mm_token_type_ids[:, :n].to(is_image.device)
    real = torch.ones_like(given, dtype=torch.bool) if attention_mask is None else attention_mask[:, :n].bool()
    if ((given == 1) != is_image[:, :n])[real].any():
        raise ValueError("mm_token_type_ids does not mark exactly the image tokens of input_ids as images (1)")


def rope_index(
    tokens: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"] | None,
    is_image: Tensor,
    image_grid_thw: Int[Tensor, "n_images 3"],
    merge: int,
) -> tuple[Int[Tensor, "3 batch pos"], Int[Tensor, "batch 1"]]:
    """HF's ``get_rope_index`` for images: (positions [3, batch, pos] with 0 at padding, deltas [batch, 1])."""
    b, length = tokens.shape
    device = tokens.device
    positions = torch.zeros(3, b, length, dtype=torch.long, device=device)
    deltas = torch.zeros(b, 1, dtype=torch.long, device=device)
    grids = [tuple(int(v) for v in g) for g in image_grid_thw.tolist()]
    next_grid = 0
    for i in range(b):
        real = torch.ones(length, dtype=torch.bool, device=device) if attention_mask is None else attention_mask[i].bool()
        img = is_image[i][real].tolist()
        chunks, cur, p = [], 0, 0
        while p < len(img):
            if not img[p]:
                q = p
                while q < len(img) and not img[q]:
                    q += 1
                chunks.append(torch.arange(q - p, device=device).expand(3, -1) + cur)
                cur += q - p
                p = q
                continue
            if next_grid >= len(grids):
                raise ValueError(f"the prompts hold more images than image_grid_thw lists ({len(grids)})")
            t, h, w = grids[next_grid]
            next_grid += 1
            lh, lw = h // merge, w // merge
            n = t * lh * lw
            if p + n > len(img) or not all(img[p : p + n]):
                raise ValueError(f"batch item {i}: an image of grid {(t, h, w)} needs {n} consecutive image tokens "
                                 "in the prompt; the image placeholders do not match image_grid_thw")
            tt, hh, ww = torch.meshgrid(torch.arange(t, device=device), torch.arange(lh, device=device),
                                        torch.arange(lw, device=device), indexing="ij")
            chunks.append(torch.stack([tt, hh, ww]).reshape(3, -1) + cur)
            cur += max(h, w) // merge
            p += n
        item = torch.cat(chunks, dim=1) if chunks else torch.zeros(3, 0, dtype=torch.long, device=device)
        positions[:, i, real] = item
        deltas[i, 0] = (int(item.max()) + 1 if item.numel() else 0) - len(img)
    if next_grid != len(grids):
        raise ValueError(f"image_grid_thw lists {len(grids)} images but the prompts hold {next_grid}")
    return positions, deltas


from . import positions_grid  # noqa: E402,F401  (registers "xdrope")
