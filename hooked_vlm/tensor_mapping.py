"""The KeyMap walk shared by loading and ``inspect``: checkpoint tensor names and shapes -> our parameters.

:func:`map_checkpoint_tensors` takes the model (the meta device is fine), a converter's KeyMap and
{checkpoint tensor name: shape} and returns a :class:`TensorMapping`: the copy plan and every reason the
checkpoint would not load. ``hooked_vlm.loading.fill_from_safetensors`` raises on it before reading a weight.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class TensorMapping:
    """The KeyMap walk over a checkpoint's tensor names and shapes (loading and ``inspect`` share it).

    ``plan`` lists (checkpoint tensor, our parameter) pairs to copy; every other list is a reason the
    checkpoint would not load (``ignored`` excepted: tensors the converter deliberately skips, with why).
    """

    plan: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (checkpoint tensor, reason)
    unused: list[str] = field(default_factory=list)  # checkpoint tensors the KeyMap does not know
    unknown_targets: list[tuple[str, str]] = field(default_factory=list)  # mapped to a name we lack (a converter bug)
    duplicates: list[tuple[str, list[str]]] = field(default_factory=list)  # our parameter, >1 checkpoint tensors
    # (checkpoint tensor, our parameter, shape after the transform, our shape, whether a transform ran)
    misshaped: list[tuple[str, str, tuple[int, ...], tuple[int, ...], bool]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # our parameters (or whole tie groups) that get no tensor
    # tie groups (one tensor under several of our names) given a checkpoint tensor under 2+ of those names, e.g.
    # embed_tokens AND lm_head while the config ties them: {our name: checkpoint tensor} per group. The loader compares
    # the values and unties the group when they differ, as HF's from_pretrained does (modeling_utils.tie_weights).
    tied_twice: list[dict[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.unused or self.unknown_targets or self.duplicates or self.misshaped or self.missing)

    def raise_if_bad(self, where: Any) -> None:
        """Raise the loader's error for the first kind of problem found (in loading's order)."""
        if self.unknown_targets:
            key, ours = self.unknown_targets[0]
            raise KeyError(f"converter maps checkpoint tensor {key!r} to {ours!r}, which the model does not have")
        if self.unused:
            raise ValueError(
                f"{len(self.unused)} checkpoint tensor(s) in {where} are not used by the converter: "
                f"{_listing(self.unused)}. The checkpoint does not match the "
                "architecture in config.json, or the converter is incomplete; refusing to load silently wrong weights."
            )
        if self.duplicates:
            ours, keys = self.duplicates[0]
            raise ValueError(f"checkpoint tensors {', '.join(map(repr, keys))} in {where} all map to {ours}; the checkpoint "
                             "holds the same weight under two names (two key layouts mixed?), refusing to pick one")
        if self.misshaped:
            key, ours, shape, expected, transformed = self.misshaped[0]
            verb = "becomes shape" if transformed else "has shape"
            more = f" ({len(self.misshaped) - 1} more misshaped: {_listing([m[0] for m in self.misshaped[1:]])})" \
                if len(self.misshaped) > 1 else ""
            raise ValueError(f"checkpoint tensor {key!r} {verb} {shape}; {ours} expects {expected} "
                             f"(config.json does not match the weights){more}")
        if self.missing:
            raise ValueError(
                f"{len(self.missing)} parameter(s) got no tensor from the checkpoint in {where}: "
                f"{_listing(self.missing)}. The checkpoint is incomplete "
                "(a shard missing?) or does not match config.json."
            )


def _listing(names: list[str], n: int = 10) -> str:
    return f"{', '.join(names[:n])}{' ...' if len(names) > n else ''}"


def loadable_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our parameters (tied ones under every name) and persistent buffers: what a checkpoint must fill."""
    targets = dict(model.named_parameters(remove_duplicate=False))
    targets.update({n: b for n, b in model.named_buffers() if _is_persistent(model, n)})
    return targets


def map_checkpoint_tensors(model: torch.nn.Module, keymap: Any, shapes: Mapping[str, Sequence[int]]) -> TensorMapping:
    """Walk {checkpoint tensor name: shape} through ``keymap`` onto ``model`` (which may live on meta).

    Shapes after a converter transform are computed by running it on a meta tensor. A tie group (one
    tensor under several names, e.g. W_E and W_U) is satisfied when any one of its names is loaded.
    """
    targets = loadable_tensors(model)
    out = TensorMapping()
    sources: dict[str, list[str]] = {}
    for key, shape in shapes.items():
        try:
            ours = keymap.target(key, tuple(shape))
        except KeyError:
            out.unused.append(key)
            continue
        if ours is None:
            out.ignored.append((key, _ignore_reason(keymap, key)))
            continue
        if ours not in targets:
            out.unknown_targets.append((key, ours))
            continue
        index = ours.index if hasattr(ours, "slot") else None  # converters.base.Part: one slice of our parameter
        sources.setdefault(ours if index is None else ours.slot, []).append(key)
        out.plan.append((key, ours))
        expected = tuple(targets[ours].shape if index is None else targets[ours][index].shape)
        fn = keymap.transform(ours)
        got = tuple(shape) if fn is None else tuple(fn(torch.empty(tuple(shape), device="meta")).shape)
        if got != expected:
            out.misshaped.append((key, ours, got, expected, fn is not None))
    out.duplicates = [(ours, keys) for ours, keys in sources.items() if len(keys) > 1]
    filled = _filled_by_parts(out.plan, targets)
    groups: dict[int, list[str]] = {}
    for name, tensor in targets.items():
        groups.setdefault(id(tensor), []).append(name)
    out.missing = [name for names in groups.values() if not any(n in sources or filled.get(n) for n in names)
                   for name in names]
    out.tied_twice = [{n: sources[n][0] for n in names if n in sources} for names in groups.values()
                      if sum(n in sources for n in names) > 1]
    return out


def _filled_by_parts(plan: list, targets: Mapping[str, torch.Tensor]) -> dict[str, bool]:
    """{our parameter: True} for those its slices fill completely: distinct slots (a repeated slot is a duplicate)
    whose sizes add up to the parameter's (the converters' slices of one parameter are disjoint by construction)."""
    slots: dict[str, dict[str, int]] = {}
    for _, ours in plan:
        index = ours.index if hasattr(ours, "slot") else None
        if index is not None:
            slots.setdefault(str(ours), {})[ours.slot] = targets[ours][index].numel()
    return {name: sum(sizes.values()) == targets[name].numel() for name, sizes in slots.items()}


def _ignore_reason(keymap: Any, key: str) -> str:
    canonical = keymap.canonical(key)
    for pattern, reason in keymap.ignored:
        if re.fullmatch(pattern, canonical):
            return reason
    return "ignored"


def _is_persistent(model: torch.nn.Module, name: str) -> bool:
    module_name, _, buffer_name = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    return buffer_name not in module._non_persistent_buffers_set
