"""Cache buffers reused across ``run_with_cache`` calls when shapes repeat.

A full cache is memory-bound: on CPU every cached activation is fresh memory that the kernel must
fault in page by page (benchmarks/RESULTS.md). The largest entries, the attention scores and
patterns ([batch, head, q_pos, k_pos] per layer), are written by our own kernels, so the next run
with the same shapes can write them into the previous cache's tensors instead -- but only tensors
nobody can see any more: the previous cache was dropped and no view, copy-free slice or autograd
graph holds their memory (Python refcounts and the storage use count are checked). A tensor still in
use is never touched; the run then allocates a fresh one, as before. The values written are the
values a fresh tensor would get (same kernels; tested bit for bit).

The buffers of the last cache stay allocated until the next run or ``model.free_cache_buffers()``.
"""

from __future__ import annotations

import sys

import torch

#: hook-name endings whose tensors our attention writes with ``out=``
REUSABLE = ("hook_attn_scores", "hook_pattern")


def _only_ours(t: torch.Tensor, holders: int) -> bool:
    """Nobody but ``holders`` Python references (the caller's) holds ``t``, its base or their memory.

    The cache stores ``activation.detach()``, an alias whose ``_base`` is the activation itself; the
    storage is then held by exactly those two tensors (plus the temporary storage object made here).
    A base that needs grad may be saved in an autograd graph, where counts cannot see it: never reused.
    """
    if t.requires_grad or sys.getrefcount(t) > holders + 1:
        return False
    base = t._base
    n_impls = 1
    if base is not None:
        # the local `base`, getrefcount's argument, and the reference a tensor's PyObject gets from its C++
        # TensorImpl once only C++ (here: the alias t) holds it. A hook that kept the activation itself
        # is excluded in keep(): entries are kept only from hook points without hooks of their own.
        if base.requires_grad or sys.getrefcount(base) > 3:
            return False
        n_impls = 2
    del base
    return torch._C._storage_Use_Count(t.untyped_storage()._cdata) <= n_impls + 1


class CacheBuffers:
    """Tensors of the last cache that the next run may overwrite (see the module docstring)."""

    def __init__(self) -> None:
        self._store: dict[str, torch.Tensor] = {}
        self.active = False  # True while run_with_cache runs
        self.reused = 0  # buffers written again in the current run (for tests and benchmarks)

    def take(self, name: str | None, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
        """The previous cache's tensor for ``name`` if it has this shape/dtype/device and nobody else holds it."""
        if not self.active or name is None:
            return None
        t = self._store.pop(name, None)
        if t is None or tuple(t.shape) != tuple(shape) or t.dtype != dtype or t.device != device or not t.is_contiguous():
            return None
        if not _only_ours(t, holders=2):  # take's `t` and _only_ours's argument
            return None
        self.reused += 1
        return t

    def keep(self, cache: dict[str, torch.Tensor], hook_dict: dict) -> None:
        """Remember this run's reusable entries (replacing the previous run's); call after the caching hooks
        are removed. Entries of hook points that still have hooks (a user's hook may hold the activation) are not kept."""
        self._store = {n: t for n, t in cache.items() if n.endswith(REUSABLE) and isinstance(t, torch.Tensor)
                       and n in hook_dict and not hook_dict[n].fwd_hooks
                       and not t.requires_grad and (t._base is None or not t._base.requires_grad)}

    def clear(self) -> None:
        self._store = {}

    def __len__(self) -> int:
        return len(self._store)
