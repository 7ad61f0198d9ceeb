"""Batches from a dataset: single-example input dicts or (image, prompt) pairs, left-padded into one batch.

A dataset is any iterable of examples; an example is either

* a prepared input dict for ONE example (``model.prepare_inputs(...)``, an HF processor's output,
  batch dimension 1), or
* an ``(image, prompt)`` pair (``image`` may be a list of images, one per placeholder, or None);
  it goes through ``model.prepare_inputs``.

Examples with different token counts share a batch: sequence tensors are left-padded (so
``model.generate`` works on the batch too) and every item gets its own spans. A core module: the SAE
activation stores and :func:`hooked_vlm.analysis.run_dataset` (which re-exports these names) both batch with it.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch
from torch import Tensor
from tqdm.auto import tqdm

#: input keys laid out [batch, pos] that are padded on the left
SEQUENCE_KEYS = ("input_ids", "attention_mask", "position_ids", "token_type_ids", "mm_token_type_ids")


def collate(model: Any, items: list[dict], padding_side: str = "left") -> dict[str, Tensor]:
    """Merge single-example input dicts into one batch (sequence keys padded, the rest concatenated)."""
    pad_id = getattr(model.cfg.roles, "pad_token_id", None)
    pad_id = 0 if pad_id is None else pad_id
    items = [dict(it) for it in items]
    for it in items:
        if "attention_mask" not in it:
            it["attention_mask"] = torch.ones_like(it["input_ids"])
    length = max(int(it["input_ids"].shape[1]) for it in items)
    out: dict[str, Tensor] = {}
    for key in items[0]:
        vals = [it[key] for it in items]
        if not isinstance(vals[0], Tensor):
            out[key] = vals[0]
            continue
        if key in SEQUENCE_KEYS:
            fill = pad_id if key == "input_ids" else 0
            padded = []
            for v in vals:
                extra = length - v.shape[1]
                pad = torch.full((v.shape[0], extra, *v.shape[2:]), fill, dtype=v.dtype, device=v.device)
                padded.append(torch.cat([pad, v] if padding_side == "left" else [v, pad], 1))
            out[key] = torch.cat(padded, 0)
        else:
            out[key] = torch.cat(vals, 0)
    return out


def _prepare(model: Any, chunk: list[Any], padding_side: str) -> dict[str, Tensor]:
    if all(isinstance(x, dict) or hasattr(x, "keys") for x in chunk):
        return collate(model, [dict(x) for x in chunk], padding_side)
    images, prompts = [], []
    for x in chunk:
        image, prompt = x
        if image is not None:
            images.extend(image if isinstance(image, (list, tuple)) else [image])
        prompts.append(prompt)
    return model.prepare_inputs(images=images or None, text=prompts, padding_side=padding_side)


def iterate_batches(model: Any, dataset: Iterable[Any], batch_size: int = 8, progress: bool = True,
                    desc: str = "examples", padding_side: str = "left") -> Iterator[tuple[list[int], dict[str, Tensor]]]:
    """Yield (example indices, batched inputs) over ``dataset`` with a tqdm bar (counting examples)."""
    total = len(dataset) if hasattr(dataset, "__len__") else None
    bar = tqdm(total=total, disable=not progress, desc=desc)
    chunk: list[Any] = []
    start = 0
    for example in dataset:
        chunk.append(example)
        if len(chunk) == batch_size:
            yield list(range(start, start + len(chunk))), _prepare(model, chunk, padding_side)
            bar.update(len(chunk))
            start += len(chunk)
            chunk = []
    if chunk:
        yield list(range(start, start + len(chunk))), _prepare(model, chunk, padding_side)
        bar.update(len(chunk))
    bar.close()
