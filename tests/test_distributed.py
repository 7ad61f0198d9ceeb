"""Data parallel run_dataset: 2 gloo processes on toy-llava give exactly the single-process DataFrame."""

from __future__ import annotations

import os
import pickle
import socket
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

from hooked_vlm import HookedVLM
from hooked_vlm.analysis import distributed as dd
from hooked_vlm.analysis import run_dataset, span_mask, spans_of

N_ITEMS, BATCH = 5, 2  # 3 batches: rank 0 runs batches 0 and 2, rank 1 batch 1 (a short last batch)


def _dataset() -> list:
    from hooked_vlm.toy.data import make_scenes, prompt

    kinds = ("colour", "shape", "position")
    return [(s.pil(), prompt(kinds[i % 3])) for i, s in enumerate(make_scenes(N_ITEMS, seed=7))]


def _top3_frame(model, inputs) -> pd.DataFrame:
    """Three rows per item (so the order within an example is checked too): top-3 next tokens at the last position."""
    with torch.no_grad():
        logits = model(**inputs)[span_mask(spans_of(model, inputs), "last")]
    top = logits.topk(3, -1)
    return pd.DataFrame([dict(batch=b, rank_k=k, token=int(top.indices[b, k]), logit=float(top.values[b, k]))
                         for b in range(logits.shape[0]) for k in range(3)])


def _worker(rank: int, world: int, port: int, threads: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    model = HookedVLM.from_pretrained("toy-llava")
    data = _dataset()
    listed = run_dataset(model, data, _top3_frame, batch_size=BATCH, progress=False, distributed=True)
    streamed = run_dataset(model, iter(data), _top3_frame, batch_size=BATCH, progress=False, distributed=True)
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump((listed, streamed, torch.distributed.get_backend()), f)
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_give_the_single_process_frame(tmp_path):
    model = HookedVLM.from_pretrained("toy-llava")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the children run on 1 thread (OpenMP's pool does not survive a fork): so does the reference
    try:
        single = run_dataset(model, _dataset(), _top3_frame, batch_size=BATCH, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert len(single) == 3 * N_ITEMS and list(single.example) == [i for i in range(N_ITEMS) for _ in range(3)]
    # fork: the children start with the imported modules (seconds saved)
    mp.start_processes(_worker, args=(2, _free_port(), 1, str(tmp_path)), nprocs=2,
                       start_method="fork")
    with open(tmp_path / "rank0.pkl", "rb") as f:
        listed, streamed, backend = pickle.load(f)
    with open(tmp_path / "rank1.pkl", "rb") as f:
        other = pickle.load(f)
    assert backend == "gloo"
    pd.testing.assert_frame_equal(listed, single, check_exact=True)  # exact: same batches, same kernels
    pd.testing.assert_frame_equal(streamed, single, check_exact=True)
    assert other[:2] == (None, None)  # only rank 0 gets the results


def test_batch_plan_shards_whole_batches_round_robin():
    plans = [dd.batch_plan(7, 2, r, 3) for r in range(3)]
    assert [[b for b, _ in p] for p in plans] == [[0, 3], [1], [2]]
    assert sorted(i for p in plans for _, idx in p for i in idx) == list(range(7))
    assert plans[0][1][1] == range(6, 7)
    streamed = [list(dd.rank_items(iter("abcdefg"), 2, r, 3)) for r in range(3)]
    assert streamed[0] == [(0, [0, 1], ["a", "b"]), (3, [6], ["g"])] and streamed[2] == [(2, [4, 5], ["e", "f"])]
    with pytest.raises(ValueError, match="rank 3 is outside"):
        dd.batch_plan(7, 2, 3, 3)


def test_distributed_without_torchrun_says_how_to_launch(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    if torch.distributed.is_initialized():
        pytest.skip("a process group is already set up in this process")
    with pytest.raises(RuntimeError, match="torchrun"):
        run_dataset(SimpleNamespace(device=torch.device("cpu")), [], _top3_frame, distributed=True)
