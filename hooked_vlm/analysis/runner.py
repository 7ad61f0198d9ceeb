"""Run any analysis over a dataset: batching, a progress bar, tidy pandas results.

A dataset is any iterable of examples; an example is either

* a prepared input dict for ONE example (``model.prepare_inputs(...)``, an HF processor's output,
  batch dimension 1), or
* an ``(image, prompt)`` pair (``image`` may be a list of images, one per placeholder, or None);
  it goes through ``model.prepare_inputs``.

Examples with different token counts share a batch: sequence tensors are left-padded (so
``model.generate`` works on the batch too) and every item gets its own spans. Padding never
changes the numbers of an item (padded keys are masked; RoPE is relative). The batching itself
(:func:`collate`, :func:`iterate_batches`) is the core's :mod:`hooked_vlm.batches`, re-exported here.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from tqdm.auto import tqdm

from ..batches import SEQUENCE_KEYS, _prepare, collate, iterate_batches

__all__ = ["SEQUENCE_KEYS", "collate", "iterate_batches", "run_dataset", "save_results"]


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
