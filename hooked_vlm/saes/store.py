"""Activation stores for training SAEs on VLM inputs: (image, text) examples in, shuffled activation batches out.

SAELens's own ``ActivationsStore`` feeds token sequences to a language model; a VLM needs images,
a processor and a choice of roles (image tokens only, text only, ...). This module streams the
activations of one hook point over a dataset of (image, prompt) pairs or prepared input dicts
(:func:`hooked_vlm.batches.iterate_batches`), keeps the positions of the chosen spans, and
mixes them in a seeded shuffle buffer. A store is an iterator of ``[train_batch_size, d_in]``
tensors, which is exactly the ``DataProvider`` that SAELens's ``SAETrainer`` consumes
(see :mod:`hooked_vlm.saes.train`), so SAELens keeps doing the SAE training math.

Every row carries its origin (:data:`INDEX_COLUMNS`): the dataset item, the sequence position, the
role it was kept for and its patch-grid cell (image, tile, row, col; -1 for non-image tokens), so
features can be drawn back on the image and checked against ground truth.
:mod:`hooked_vlm.saes.shards` writes the same rows to disk for datasets larger than memory.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from ..batches import iterate_batches
from ..span_select import span_mask
from ..summary import summary_repr

#: origin of every activation row; grid cells are -1 where the position is not an image patch
INDEX_COLUMNS = ("item", "position", "role", "image", "tile", "grid_row", "grid_col")
#: hooks laid out [batch, head, q_pos, k_pos]: not one row per position
_NOT_PER_POSITION = ("hook_attn_scores", "hook_pattern")


@dataclass
class ActivationChunk:
    """Activations ``[n, d_in]`` with their origin: ``index[column]`` is an int64 array [n] per
    :data:`INDEX_COLUMNS` (``role`` holds the position of the role's name in ``roles``)."""

    __repr__ = summary_repr  # a short summary, not the tensors (hooked_vlm.summary)

    acts: Tensor
    index: dict[str, np.ndarray]
    roles: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.acts.shape[0])

    def select(self, rows: slice | Tensor | np.ndarray) -> "ActivationChunk":
        """The rows ``rows`` (a slice, or an index tensor / array) of this chunk."""
        if isinstance(rows, slice):
            return ActivationChunk(self.acts[rows], {k: v[rows] for k, v in self.index.items()}, self.roles)
        rows_t = torch.as_tensor(rows, dtype=torch.long)
        rows_np = rows_t.cpu().numpy()
        return ActivationChunk(self.acts[rows_t.to(self.acts.device)], {k: v[rows_np] for k, v in self.index.items()},
                               self.roles)

    @staticmethod
    def cat(chunks: Sequence["ActivationChunk"]) -> "ActivationChunk":
        if len(chunks) == 1:
            return chunks[0]
        roles = chunks[0].roles
        if any(c.roles != roles for c in chunks):
            raise ValueError(f"cannot concatenate chunks kept for different roles: {sorted({c.roles for c in chunks})}")
        return ActivationChunk(torch.cat([c.acts for c in chunks]),
                               {k: np.concatenate([c.index[k] for c in chunks]) for k in INDEX_COLUMNS}, roles)

    def frame(self) -> Any:
        """The origin of every row as a pandas DataFrame (``role`` as the span name)."""
        import pandas as pd

        df = pd.DataFrame({k: self.index[k] for k in INDEX_COLUMNS})
        df["role"] = pd.Categorical.from_codes(self.index["role"], categories=list(self.roles))
        return df


def normalise_spans(spans: str | Sequence[str]) -> tuple[str, ...]:
    """``"image"`` / ``["image", "text"]`` -> a non-empty tuple of distinct span names."""
    names = (spans,) if isinstance(spans, str) else tuple(spans)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"spans must be a span name or a non-empty list of names (e.g. 'image', ['image', 'text']), "
                         f"got {spans!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"spans lists a name twice: {list(names)}")
    return names


def stop_layer(model: Any, hook_name: str) -> int | None:
    """The ``stop_at_layer`` that still computes ``hook_name`` (no work after it), or None (run everything)."""
    m = re.match(r"blocks\.(\d+)\.", hook_name)
    if m:
        return int(m.group(1)) + 1
    if hook_name in ("hook_embed", "hook_image_embeds") or hook_name.startswith(("vision.", "projector.")):
        return 0
    return None


def check_hook(model: Any, hook_name: str) -> None:
    """Refuse hook names the store cannot read (unknown, or not one row per sequence position)."""
    if hook_name not in model.hook_dict:
        model._resolve_hook_name(hook_name)  # raises with close matches
    if hook_name.endswith(_NOT_PER_POSITION):
        raise ValueError(f"{hook_name!r} is laid out [batch, head, q_pos, k_pos], not one vector per position; "
                         "train SAEs on a per-position hook (hook_embed, blocks.{l}.hook_resid_post, "
                         "blocks.{l}.attn.hook_z, blocks.{l}.mlp.hook_post, ...)")


@torch.no_grad()
def batch_activations(model: Any, inputs: dict, hook_name: str, spans: str | Sequence[str],
                      items: Sequence[int] | None = None, dtype: torch.dtype | None = torch.float32) -> ActivationChunk:
    """Activations of ``hook_name`` at the positions of ``spans`` for one batch of inputs.

    Rows come batch item by batch item, positions in order; a position in several of the listed spans
    is kept once, for the first span listed. Trailing dims are flattened (``hook_z`` [b, pos, head,
    d_head] -> head * d_head, SAELens's ``hook_z`` layout). ``items`` names the batch rows (default 0..b-1).
    """
    names = normalise_spans(spans)
    check_hook(model, hook_name)
    _, cache = model.run_with_cache(**inputs, names_filter=hook_name, stop_at_layer=stop_layer(model, hook_name))
    act, sp = cache[hook_name], cache.spans
    if act.ndim < 3 or tuple(act.shape[:2]) != (sp.batch, sp.seq_len):
        raise ValueError(f"{hook_name!r} has shape {tuple(act.shape)}, not [batch, pos, ...] over the merged sequence "
                         f"({sp.batch}, {sp.seq_len}); the store reads language-model hooks (hook_embed, blocks.{{l}}.*, "
                         "ln_final.*). Vision-tower and hook_image_embeds rows are not sequence positions.")
    act = act.reshape(sp.batch, sp.seq_len, -1)
    role = torch.full((sp.batch, sp.seq_len), -1, dtype=torch.long, device=act.device)
    for i, name in reversed(list(enumerate(names))):  # the first listed span wins where spans overlap
        role[span_mask(sp, name).to(act.device) & ~sp.mask("pad").to(act.device)] = i
    b, p = (role >= 0).nonzero(as_tuple=True)
    items_arr = np.arange(sp.batch) if items is None else np.asarray(items, dtype=np.int64)
    if len(items_arr) != sp.batch:
        raise ValueError(f"items names {len(items_arr)} examples for a batch of {sp.batch}")
    grid = sp.grid.to(act.device)[b, p].cpu().numpy().astype(np.int64)
    b_np = b.cpu().numpy()
    index = dict(item=items_arr[b_np], position=p.cpu().numpy().astype(np.int64),
                 role=role[b, p].cpu().numpy().astype(np.int64), image=grid[:, 0], tile=grid[:, 1],
                 grid_row=grid[:, 2], grid_col=grid[:, 3])
    rows = act[b, p]
    return ActivationChunk(rows if dtype is None else rows.to(dtype), index, names)


def stream_activations(model: Any, dataset: Iterable[Any], hook_name: str, spans: str | Sequence[str] = "image",
                       batch_size: int = 8, progress: bool = True, dtype: torch.dtype | None = torch.float32,
                       desc: str | None = None) -> Iterator[ActivationChunk]:
    """One :class:`ActivationChunk` per model batch over ``dataset`` (items as in :mod:`hooked_vlm.batches`)."""
    check_hook(model, hook_name)
    for idx, inputs in iterate_batches(model, dataset, batch_size, progress, desc or f"activations at {hook_name}"):
        yield batch_activations(model, inputs, hook_name, spans, idx, dtype)


class ShuffleBuffer:
    """Seeded mixing buffer (SAELens's ``mixing_buffer`` scheme, keeping each row's origin).

    Rows accumulate until ``buffer_size``; the buffer is permuted, everything but ``mix_fraction`` of it
    is served in batches of ``batch_size`` and the rest stays to mix with the next rows. At the end the
    remainder is permuted and served; the last batch may be short. ``shuffle=False`` keeps stream order.
    """

    def __init__(self, buffer_size: int, batch_size: int, seed: int = 0, shuffle: bool = True, mix_fraction: float = 0.5):
        if batch_size < 1 or buffer_size < batch_size:
            raise ValueError(f"need 1 <= batch_size <= buffer_size, got batch_size={batch_size}, buffer_size={buffer_size}")
        if not 0.0 <= mix_fraction < 1.0:
            raise ValueError(f"mix_fraction must be in [0, 1), got {mix_fraction}")
        self.buffer_size, self.batch_size, self.shuffle, self.mix_fraction = buffer_size, batch_size, shuffle, mix_fraction
        self.generator = torch.Generator().manual_seed(seed)

    def _permuted(self, chunk: ActivationChunk) -> ActivationChunk:
        return chunk.select(torch.randperm(len(chunk), generator=self.generator)) if self.shuffle else chunk

    def batches(self, chunks: Iterable[ActivationChunk]) -> Iterator[ActivationChunk]:
        pending: list[ActivationChunk] = []
        n = 0
        for chunk in chunks:
            if not len(chunk):
                continue
            pending.append(chunk)
            n += len(chunk)
            if n < self.buffer_size:
                continue
            buf = self._permuted(ActivationChunk.cat(pending))
            keep = int(self.buffer_size * self.mix_fraction) if self.shuffle else n % self.batch_size
            serve = max(1, (n - keep) // self.batch_size) * self.batch_size
            for start in range(0, serve, self.batch_size):
                yield buf.select(slice(start, start + self.batch_size))
            pending = [buf.select(slice(serve, None))] if serve < n else []
            n -= serve
        if n:
            buf = self._permuted(ActivationChunk.cat(pending))
            for start in range(0, n, self.batch_size):
                yield buf.select(slice(start, start + self.batch_size))


class ActivationStore:
    """An iterator of activation batches ``[train_batch_size, d_in]`` (SAELens's ``DataProvider``).

    Subclasses give the chunks of one epoch (:meth:`epoch_chunks`). ``n_epochs=None`` loops forever
    (what ``SAETrainer.fit`` expects: it stops after ``total_training_samples``); batches then always
    have ``train_batch_size`` rows, epochs running into each other through the buffer.
    """

    hook_name: str
    spans: tuple[str, ...]

    def __init__(self, train_batch_size: int = 4096, buffer_size: int | None = None, seed: int = 0, shuffle: bool = True,
                 n_epochs: int | None = None, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 mix_fraction: float = 0.5):
        if n_epochs is not None and n_epochs < 1:
            raise ValueError(f"n_epochs must be >= 1 or None (loop forever), got {n_epochs}")
        self.train_batch_size = train_batch_size
        self.buffer_size = buffer_size if buffer_size is not None else 16 * train_batch_size
        self.seed, self.shuffle, self.n_epochs = seed, shuffle, n_epochs
        self.device, self.dtype, self.mix_fraction = torch.device(device), dtype, mix_fraction
        ShuffleBuffer(self.buffer_size, train_batch_size, seed, shuffle, mix_fraction)  # validate now, not mid-training
        self._batches: Iterator[Tensor] | None = None

    def epoch_chunks(self, epoch: int) -> Iterable[ActivationChunk]:
        raise NotImplementedError

    def chunks(self) -> Iterator[ActivationChunk]:
        epochs = itertools.count() if self.n_epochs is None else range(self.n_epochs)
        for epoch in epochs:
            yield from self.epoch_chunks(epoch)

    def batches_with_index(self) -> Iterator[ActivationChunk]:
        """Shuffled batches with the origin of every row (a fresh pass, seeded like the store)."""
        buffer = ShuffleBuffer(self.buffer_size, self.train_batch_size, self.seed, self.shuffle, self.mix_fraction)
        return buffer.batches(self.chunks())

    def __iter__(self) -> "ActivationStore":
        return self

    def __next__(self) -> Tensor:
        if self._batches is None:
            self._batches = (c.acts.to(self.device, self.dtype) for c in self.batches_with_index())
        return next(self._batches)

    def collect(self) -> ActivationChunk:
        """Every row of one pass in one chunk (stream order when ``shuffle=False``); needs finite ``n_epochs``."""
        if self.n_epochs is None:
            raise ValueError("collect() needs a finite pass: build the store with n_epochs=1")
        return ActivationChunk.cat(list(self.batches_with_index()))


class VLMActivationStore(ActivationStore):
    """Activations of ``hook_name`` at ``spans`` over ``dataset``, computed by ``model`` as they are needed.

    ``dataset``: (image, prompt) pairs or prepared single-example input dicts (see
    :mod:`hooked_vlm.batches`); it is read once per epoch (in order: shuffling happens in the
    buffer). ``cache_in_memory=True`` keeps the first epoch's rows and replays them (small datasets).
    """

    def __init__(self, model: Any, dataset: Sequence[Any], hook_name: str, spans: str | Sequence[str] = "image",
                 model_batch_size: int = 8, progress: bool = True, cache_in_memory: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        check_hook(model, hook_name)
        self.model, self.dataset, self.hook_name = model, dataset, hook_name
        self.spans = normalise_spans(spans)
        self.model_batch_size, self.progress, self.cache_in_memory = model_batch_size, progress, cache_in_memory
        self._cached: list[ActivationChunk] | None = None
        self._d_in: int | None = None

    @property
    def d_in(self) -> int:
        """Width of one activation row (runs the model on the first example once)."""
        if self._d_in is None:
            head = list(itertools.islice(iter(self.dataset), 1))
            if not head:
                raise ValueError("the dataset is empty")
            first = next(stream_activations(self.model, head, self.hook_name, self.spans, 1, progress=False))
            self._d_in = int(first.acts.shape[1])
        return self._d_in

    def epoch_chunks(self, epoch: int) -> Iterable[ActivationChunk]:
        if self._cached is not None:
            yield from self._cached
            return
        kept: list[ActivationChunk] = []
        for chunk in stream_activations(self.model, self.dataset, self.hook_name, self.spans, self.model_batch_size,
                                        self.progress, self.dtype, desc=f"epoch {epoch}: activations at {self.hook_name}"):
            if self.cache_in_memory:
                kept.append(chunk)
            yield chunk
        if self.cache_in_memory:
            self._cached = kept
