"""Run any analysis over a dataset: batching, a progress bar, tidy pandas results.

A dataset is any iterable of examples; an example is either

* a prepared input dict for ONE example (``model.prepare_inputs(...)``, an HF processor's output,
  batch dimension 1), or
* an ``(image, prompt)`` pair (``image`` may be a list of images, one per placeholder, or None);
  it goes through ``model.prepare_inputs``.

Examples with different token counts share a batch: sequence tensors are left-padded (so
``model.generate`` works on the batch too) and every item gets its own spans. Padding never
changes the numbers of an item (padded keys are masked; RoPE is relative).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

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


def run_dataset(model: Any, dataset: Iterable[Any], fn: Callable[[Any, dict], Any], batch_size: int = 8,
                progress: bool = True, desc: str = "examples", padding_side: str = "left",
                distributed: bool = False) -> Any:
    """Apply ``fn(model, batch_inputs)`` to every batch and concatenate its tidy results.

    ``fn`` returns a DataFrame with a ``batch`` column (row of the batch) -- every ``*_frame``
    function of :mod:`hooked_vlm.analysis` does -- or a list of per-item dicts. The result is one
    DataFrame with an ``example`` column (index in the dataset) in place of ``batch``.

    ``distributed=True`` (under ``torchrun``, see :mod:`hooked_vlm.analysis.distributed`): each
    process runs the batches ``i`` with ``i % world_size == rank`` (the same batches a single
    process builds) with its own progress bar; rank 0 returns the gathered DataFrame, equal to the
    single-process one, and the other ranks return None.
    """
    import pandas as pd

    if not distributed:
        frames = [_frame(fn(model, inputs), idx)
                  for idx, inputs in iterate_batches(model, dataset, batch_size, progress, desc, padding_side)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    from . import distributed as dd

    rank, world = dd.init(model.device)
    total = None
    if hasattr(dataset, "__len__"):
        total = sum(len(idx) for _, idx in dd.batch_plan(len(dataset), batch_size, rank, world))
    bar = tqdm(total=total, disable=not progress, desc=f"{desc} [rank {rank}/{world}]", position=rank)
    parts = []
    for b, idx, chunk in dd.rank_items(dataset, batch_size, rank, world):
        parts.append((b, _frame(fn(model, _prepare(model, chunk, padding_side)), idx)))
        bar.update(len(chunk))
    bar.close()
    frames = dd.gather_in_order(parts, model.device)
    if frames is None:
        return None
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _frame(df: Any, idx: list[int]) -> Any:
    """``fn``'s rows with the dataset index ``example`` in place of the row within the batch."""
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        df = pd.DataFrame(list(df))
    if "batch" not in df.columns:
        raise ValueError("fn must return rows with a 'batch' column (row within the batch)")
    df = df.copy()
    df.insert(0, "example", [idx[int(b)] for b in df["batch"]])
    return df.drop(columns="batch")


def save_results(df: Any, path: str) -> None:
    """Save a results DataFrame by suffix: .csv, .json (records), .parquet, otherwise pickle."""
    p = str(path)
    if p.endswith(".csv"):
        df.to_csv(p, index=False)
    elif p.endswith(".json"):
        df.to_json(p, orient="records")
    elif p.endswith(".parquet"):
        df.to_parquet(p)
    else:
        df.to_pickle(p)
