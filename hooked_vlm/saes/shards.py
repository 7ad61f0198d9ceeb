"""Activations on disk: sharded safetensors + a parquet index, for datasets larger than memory.

Layout of a folder written by :func:`write_activations`::

    meta.json                   format, hook_name, spans, d_in, dtype, n_rows, model, shards [{file, rows}]
    shard_00000.safetensors     {"activations": [rows, d_in]}
    ...
    index.parquet               one row group per shard: shard, shard_row, item, position, role, image,
                                tile, grid_row, grid_col (role = the span name the row was kept for)

Writing streams: one shard's rows are in memory at a time and its index row group is appended as
the shard is written. :class:`DiskActivationStore` reads shards back one at a time (in a seeded
order per epoch) through the same shuffle buffer as the live store.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from .store import INDEX_COLUMNS, ActivationChunk, ActivationStore, normalise_spans, stream_activations

FORMAT = "hooked_vlm.activations/1"
META_FILE, INDEX_FILE = "meta.json", "index.parquet"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - pyarrow comes with datasets (a transformer-lens dependency)
        raise ImportError("writing/reading activation shards needs pyarrow: pip install pyarrow") from e
    return pa, pq


def _index_table(chunk: ActivationChunk, shard: int) -> Any:
    pa, _ = _pyarrow()
    cols: dict[str, Any] = {"shard": pa.array(np.full(len(chunk), shard, dtype=np.int64)),
                            "shard_row": pa.array(np.arange(len(chunk), dtype=np.int64))}
    for k in INDEX_COLUMNS:
        cols[k] = pa.array(np.asarray(chunk.roles, dtype=object)[chunk.index[k]].astype(str)) if k == "role" \
            else pa.array(chunk.index[k])
    return pa.table(cols)


def write_chunks(chunks: Iterable[ActivationChunk], out: str | Path, hook_name: str, spans: Sequence[str],
                 shard_rows: int = 1 << 16, overwrite: bool = False, extra_meta: dict | None = None) -> Path:
    """Write ``chunks`` as shards of ``shard_rows`` rows (the last may be shorter) + the parquet index."""
    from safetensors.torch import save_file

    if shard_rows < 1:
        raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty; choose a new folder or pass overwrite=True")
    out.mkdir(parents=True, exist_ok=True)
    for old in list(out.glob("shard_*.safetensors")) + [out / INDEX_FILE, out / META_FILE]:
        old.unlink(missing_ok=True)
    _, pq = _pyarrow()
    names = normalise_spans(spans)
    writer, shards, pending, n_pending, d_in, dtype = None, [], [], 0, None, None

    def flush(final: bool) -> None:
        nonlocal writer, pending, n_pending
        while n_pending >= shard_rows or (final and n_pending):
            buf = ActivationChunk.cat(pending)
            take = min(shard_rows, len(buf))
            shard, rest = buf.select(slice(0, take)), buf.select(slice(take, None))
            file = f"shard_{len(shards):05d}.safetensors"
            save_file({"activations": shard.acts.contiguous().cpu()}, str(out / file))
            table = _index_table(shard, len(shards))
            if writer is None:
                writer = pq.ParquetWriter(str(out / INDEX_FILE), table.schema)
            writer.write_table(table, row_group_size=len(shard))
            shards.append({"file": file, "rows": len(shard)})
            pending, n_pending = ([rest] if len(rest) else []), len(rest)

    try:
        for chunk in chunks:
            if chunk.roles != names:
                raise ValueError(f"chunk kept for roles {chunk.roles}, expected {names}")
            if not len(chunk):
                continue
            d_in, dtype = int(chunk.acts.shape[1]), chunk.acts.dtype
            pending.append(chunk)
            n_pending += len(chunk)
            flush(final=False)
        flush(final=True)
    finally:
        if writer is not None:
            writer.close()
    if not shards:
        raise ValueError(f"no activations to write: no position of the dataset is in spans {list(names)}")
    meta = dict(format=FORMAT, hook_name=hook_name, spans=list(names), d_in=d_in,
                dtype=str(dtype).removeprefix("torch."), n_rows=sum(s["rows"] for s in shards), shards=shards,
                **(extra_meta or {}))
    (out / META_FILE).write_text(json.dumps(meta, indent=1))
    return out


def write_activations(model: Any, dataset: Iterable[Any], hook_name: str, out: str | Path,
                      spans: str | Sequence[str] = "image", batch_size: int = 8, shard_rows: int = 1 << 16,
                      dtype: torch.dtype = torch.float32, progress: bool = True, overwrite: bool = False,
                      model_name: str | None = None) -> Path:
    """Run ``model`` over ``dataset`` and write the activations of ``hook_name`` at ``spans`` to ``out``."""
    names = normalise_spans(spans)
    chunks = stream_activations(model, dataset, hook_name, names, batch_size, progress, dtype)
    return write_chunks(chunks, out, hook_name, names, shard_rows, overwrite,
                        {"model": model_name})


def read_meta(path: str | Path) -> dict:
    path = Path(path)
    file = path / META_FILE
    if not file.exists():
        raise FileNotFoundError(f"{path} holds no {META_FILE}: not a folder written by write_activations")
    meta = json.loads(file.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{file} has format {meta.get('format')!r}; this version reads {FORMAT!r}")
    return meta


def read_shard(path: str | Path, shard: int, meta: dict | None = None) -> ActivationChunk:
    """One shard's activations with its index rows (checked to match the shard)."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = meta or read_meta(path)
    _, pq = _pyarrow()
    acts = load_file(str(path / meta["shards"][shard]["file"]))["activations"]
    table = pq.ParquetFile(str(path / INDEX_FILE)).read_row_group(shard)
    cols = {k: table.column(k).to_numpy() for k in ("shard", "shard_row", *INDEX_COLUMNS)}
    if len(acts) != len(cols["shard"]) or not (cols["shard"] == shard).all() or \
            not (cols["shard_row"] == np.arange(len(acts))).all():
        raise ValueError(f"{path}: index row group {shard} does not match {meta['shards'][shard]['file']} "
                         f"({len(cols['shard'])} index rows, {len(acts)} activation rows); rewrite the folder")
    roles = tuple(meta["spans"])
    lookup = {r: i for i, r in enumerate(roles)}
    index = {k: cols[k].astype(np.int64) for k in INDEX_COLUMNS if k != "role"}
    index["role"] = np.array([lookup[r] for r in cols["role"]], dtype=np.int64)
    return ActivationChunk(acts, index, roles)


def read_activations(path: str | Path) -> tuple[torch.Tensor, Any]:
    """Every row of a folder in writing order: (activations [n, d_in], index DataFrame). Fits in memory only."""
    meta = read_meta(path)
    chunk = ActivationChunk.cat([read_shard(path, i, meta) for i in range(len(meta["shards"]))])
    return chunk.acts, chunk.frame()


class DiskActivationStore(ActivationStore):
    """The rows of a :func:`write_activations` folder as SAE training batches (one shard in memory at a time,
    plus the buffer). With ``shuffle`` the shard order is drawn anew each epoch from ``seed``."""

    def __init__(self, path: str | Path, **kwargs: Any):
        super().__init__(**kwargs)
        self.path = Path(path)
        self.meta = read_meta(self.path)
        self.hook_name = self.meta["hook_name"]
        self.spans = tuple(self.meta["spans"])
        self.d_in = int(self.meta["d_in"])

    def __len__(self) -> int:
        return int(self.meta["n_rows"])

    def epoch_chunks(self, epoch: int) -> Iterator[ActivationChunk]:
        n = len(self.meta["shards"])
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        for i in order:
            yield read_shard(self.path, int(i), self.meta)
