"""Data parallel datasets with torch.distributed: one process per device, launched by ``torchrun``.

Every process loads the model and walks the same dataset; batch ``i`` (the same items, in the same
order, as in a single-process run) belongs to rank ``i % world_size``. Because every batch is the
batch a single process would have built, every number is the single-process number, bit for bit;
rank 0 gathers the per-batch results and puts them back in batch order.

Launch (one machine, 2 processes)::

    torchrun --standalone --nproc_per_node 2 my_script.py

Several machines: the same command on each node with ``--nnodes N --node_rank r
--rdzv_backend c10d --rdzv_endpoint HOST:PORT`` (torchrun's rendezvous; see the README).

The backend is ``nccl`` when the model sits on a CUDA device and ``gloo`` otherwise. Put each
process's model on its own GPU with :func:`local_device` (``cuda:LOCAL_RANK``).
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Iterator

import torch
import torch.distributed as dist

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def local_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu`` (LOCAL_RANK is set by torchrun)."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def backend_for(device: torch.device | str) -> str:
    """``nccl`` for a CUDA device, ``gloo`` for anything else."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init(device: torch.device | str = "cpu") -> tuple[int, int]:
    """Join the process group torchrun describes (idempotent); returns (rank, world_size).

    Uses the group already set up by the caller when there is one.
    """
    if not dist.is_available():
        raise RuntimeError("distributed=True needs torch.distributed, which this torch build lacks")
    if not dist.is_initialized():
        missing = [v for v in _TORCHRUN_VARS if v not in os.environ]
        if missing:
            raise RuntimeError(
                f"distributed=True needs the process group variables {', '.join(missing)}, which are unset; "
                "launch the script with torchrun (e.g. `torchrun --standalone --nproc_per_node 2 script.py`) "
                "or call torch.distributed.init_process_group yourself first"
            )
        device = torch.device(device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend_for(device))
    return dist.get_rank(), dist.get_world_size()


def batch_plan(n_items: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[tuple[int, range]]:
    """The (batch index, item indices) of this rank: batch ``i`` covers items ``[i*bs, (i+1)*bs)``
    and belongs to rank ``i % world_size``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1} (world_size {world_size})")
    n_batches = -(-n_items // batch_size)
    return [(i, range(i * batch_size, min((i + 1) * batch_size, n_items))) for i in range(rank, n_batches, world_size)]


def rank_items(dataset: Iterable[Any], batch_size: int, rank: int, world_size: int) -> Iterator[tuple[int, list[int], list[Any]]]:
    """Yield (batch index, item indices, items) of this rank's batches, in batch order.

    Indexable datasets (a list, a ``datasets.Dataset``) are indexed; other iterables are walked and
    the other ranks' items skipped, so every rank must see the same items in the same order.
    """
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        for b, idx in batch_plan(len(dataset), batch_size, rank, world_size):
            yield b, list(idx), [dataset[i] for i in idx]
        return
    chunk: list[Any] = []
    start = 0
    for i, example in enumerate(dataset):
        if (i // batch_size) % world_size == rank:
            chunk.append(example)
        if (i + 1) % batch_size == 0:
            if chunk:
                yield i // batch_size, list(range(start, i + 1)), chunk
            chunk, start = [], i + 1
    if chunk:
        yield start // batch_size, list(range(start, start + len(chunk))), chunk


def gather_in_order(parts: list[tuple[Any, Any]], device: torch.device | str = "cpu") -> list[Any] | None:
    """Gather every rank's ``(key, value)`` parts to rank 0; there, the values sorted by key
    (the keys of all ranks must be distinct and comparable). Other ranks get None."""
    rank, world = dist.get_rank(), dist.get_world_size()
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(torch.device(device))
    received: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(parts, received, dst=0)
    if rank != 0:
        return None
    merged = [p for rank_parts in received for p in rank_parts]
    keys = [k for k, _ in merged]
    if len(set(keys)) != len(keys):
        raise RuntimeError(f"two ranks returned results for the same key(s): {sorted(k for k in set(keys) if keys.count(k) > 1)}")
    return [v for _, v in sorted(merged, key=lambda kv: kv[0])]
