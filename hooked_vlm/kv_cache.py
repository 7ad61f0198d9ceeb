"""The cache object of generation: one state per layer, made by the layer's mixer kind (docs/architecture.md s. 3).

``KVCache(model.cfg)`` holds ``MIXERS[kind].state()`` for every LM layer: ``LayerKVCache`` (keys, values) for
attention layers, ``RecurrentState`` (conv window + recurrent state) for Gated DeltaNet layers, ... ``length`` (the
positions seen) is kept by the cache itself and advanced by the model after each forward, so it does not depend on
which kind layer 0 is. ``key_padding`` [batch, positions seen] (True at real tokens) and ``extra`` (per-generation
state of position functions, e.g. M-RoPE deltas) sit beside the layers.

KV sharing (Gemma 4, ``TowerConfig.kv_shared_layers``): a sharing layer holds no state of its own. ``shared[l]`` names
its source layer and ``layers[l]`` IS the source's ``LayerKVCache`` (the same object, no copy), which the sharing
layer reads and never appends to. Without a cache, :func:`layer_states` gives each source layer a state for the
forward, so the sharing layers read the source's keys and values of that forward (after its hooks).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .components.attention import LayerKVCache
from .components.mixers import layer_kinds, mixer_kind
from .config import HookedVLMConfig, TowerConfig


class KVCache:
    """Per-layer mixer states plus the padding mask of all positions seen so far.

    ``KVCache(model.cfg)`` (or a TowerConfig) makes the states of every layer kind; ``KVCache(n_layers)`` makes
    ``n_layers`` attention caches (every layer attention, as before hybrid models)."""

    def __init__(self, spec: int | TowerConfig | HookedVLMConfig):
        if isinstance(spec, HookedVLMConfig):
            spec = spec.text
        if isinstance(spec, TowerConfig):
            kinds = layer_kinds(spec)
        elif isinstance(spec, int) and not isinstance(spec, bool) and spec >= 0:
            kinds = ("full_attention",) * spec
        else:
            raise TypeError(f"KVCache takes the model's config (KVCache(model.cfg)) or a layer count, got {spec!r}")
        self.kinds: tuple[str, ...] = kinds
        self.layers: list[Any] = [mixer_kind(kind).state() for kind in kinds]
        self.shared: dict[int, int] = {}  # sharing layer -> its source layer (KV sharing)
        if isinstance(spec, TowerConfig):
            for l in range(spec.n_layers):
                source = spec.kv_source(l)
                if source is not None:
                    self.shared[l] = source
                    self.layers[l] = self.layers[source]
        self.length = 0  # positions seen so far
        self.key_padding: Tensor | None = None  # [batch, pos] True at real tokens
        self.extra: dict[str, Any] = {}  # per-generation state of position functions (e.g. M-RoPE deltas)

    def check_layers(self, kinds: tuple[str, ...]) -> None:
        """Raise unless this cache holds the state class of each of ``kinds`` (the model's layer kinds)."""
        wrong = [l for l, kind in enumerate(kinds)
                 if l >= len(self.layers) or not isinstance(self.layers[l], mixer_kind(kind).state)]
        if wrong or len(kinds) != len(self.layers):
            raise ValueError(
                f"this KVCache holds {len(self.layers)} layer states of kinds {sorted(set(self.kinds))}, but the model "
                f"has {len(kinds)} layers of kinds {sorted(set(kinds))} (first mismatch at layer "
                f"{wrong[0] if wrong else min(len(kinds), len(self.layers))}); make it with KVCache(model.cfg)")


def layer_states(cfg: TowerConfig, kv_cache: KVCache | None) -> list[Any]:
    """The state each LM layer's mixer gets in one forward: the cache's, or (no cache) None except for KV-sharing
    source layers, which get a fresh LayerKVCache that their sharing layers read (the keys / values of this forward)."""
    if kv_cache is not None:
        for l, source in kv_cache.shared.items():
            if kv_cache.layers[l] is not kv_cache.layers[source]:
                raise ValueError(f"KVCache.layers[{l}] must be its source layer {source}'s state (KV sharing); "
                                 "make the cache with KVCache(model.cfg)")
        return kv_cache.layers
    states: list[Any] = [None] * cfg.n_layers
    for l in range(cfg.n_layers):
        source = cfg.kv_source(l)
        if source is not None:
            if states[source] is None:
                states[source] = LayerKVCache()
            states[l] = states[source]
    return states
