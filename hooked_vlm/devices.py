"""Device maps: one model over several devices, CPU RAM and disk, with accelerate's big-model machinery.

    model = HookedVLM.from_pretrained("llava-hf/llava-1.5-13b-hf", dtype=torch.bfloat16, device_map="auto",
                                      max_memory={"cuda:0": "20GiB", "cuda:1": "20GiB"}, offload="cpu")
    model.device_map   # {"embed": "cuda:0", "vision": "cuda:0", ..., "blocks.20": "cuda:1", ..., "unembed": "cuda:0"}

Planning is accelerate's ``infer_auto_device_map`` over OUR module tree (built on the meta device, at the load
dtype), with every ``TransformerBlock``, the vision tower and the projector kept whole on one device
(:func:`no_split_classes`). Loading materialises each planned module on its device and streams the safetensors
tensors into it one at a time; the tensors of "disk" modules go from the checkpoint file straight into the offload
folder (accelerate's ``.dat`` + ``index.json`` format). Nothing holds a full copy of the weights on the CPU.
``accelerate.dispatch_model`` then attaches its ``AlignDevicesHook``s: a module's inputs move to its device when it
runs, so the residual stream crosses devices at block boundaries and every hook sees its activation on the device
of the block computing it; offloaded modules get their weights onto the main device for their forward only; the
logits come back on the device of the inputs. A layer's KV cache lives on its block's (execution) device.

Devices: "cuda:N" (or the int N), "mps", "cpu", "disk". With an accelerator in the map, "cpu" means "weights kept
in CPU RAM, run on the main device" (accelerate's CPU offload); on a CPU-only machine "cpu" is where the module
runs. "disk" always means "weights in the offload folder, run on the main device". The main device is the
embedding's device (the first accelerator of the map when the embedding is offloaded); inputs go there.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .tensor_mapping import loadable_tensors

OFFLOADED = ("cpu", "disk")


def no_split_classes(model: nn.Module) -> list[str]:
    """Module classes a plan keeps whole: the transformer block (LM and vision tower), the vision tower and the
    projector (their forwards combine their children's outputs, so a split would put them on two devices)."""
    names = {"TransformerBlock"}
    for part in (getattr(model, "vision", None), getattr(model, "projector", None)):
        if part is not None:
            names.add(type(part).__name__)
    return sorted(names)


def normalize_device(device: Any, where: str = "device_map") -> str:
    """'cuda:N' for an int N or 'cuda'; 'cpu', 'mps', 'disk' as they are; a clear error for anything else."""
    if isinstance(device, bool) or not isinstance(device, (int, str, torch.device)):
        raise ValueError(f"{where}: {device!r} is not a device; use 'cuda:N' (or the int N), 'cpu', 'mps' or 'disk'")
    if isinstance(device, int):
        device = f"cuda:{device}"
    text = str(device)
    if text == "disk":
        return text
    try:
        parsed = torch.device(text)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"{where}: {device!r} is not a device; use 'cuda:N' (or the int N), 'cpu', 'mps' or "
                         "'disk'") from err
    if parsed.type == "meta":
        raise ValueError(f"{where}: 'meta' holds no weights; use 'cuda:N', 'cpu', 'mps' or 'disk'")
    if parsed.type not in ("cpu", "mps") and parsed.index is None:
        parsed = torch.device(parsed.type, 0)
    return str(parsed)


def check_available(device: str) -> None:
    """Raise when a planned device is not on this machine (a plan made for another machine, a typo)."""
    if device in OFFLOADED:
        return
    parsed = torch.device(device)
    if parsed.type == "cuda" and parsed.index >= torch.cuda.device_count():
        raise ValueError(f"device {device} is not available: this machine has {torch.cuda.device_count()} CUDA "
                         "device(s); plan for the devices it has (max_memory) or map the modules to them")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device mps is not available on this machine")


def accelerate_max_memory(max_memory: Mapping | None, offload: Any = None) -> dict[int | str, int]:
    """Our max_memory ({"cuda:0": "20GiB", 1: 2**34, "cpu": "64GiB"}) in accelerate's form ({0: bytes, ..., "cpu": bytes},
    accelerators first). None: every visible accelerator's free memory and the available CPU RAM (accelerate's
    default). ``offload="cpu"`` adds the available CPU RAM when max_memory does not list "cpu"."""
    import psutil
    from accelerate.utils import get_max_memory
    from accelerate.utils.modeling import convert_file_size_to_int

    if max_memory is None:
        out: dict[int | str, int] = get_max_memory()
    else:
        if not isinstance(max_memory, Mapping):
            raise ValueError(f"max_memory must be a dict {{device: size}}, e.g. {{'cuda:0': '20GiB', 'cpu': '64GiB'}}; "
                             f"got {type(max_memory).__name__}")
        out = {}
        for key, size in max_memory.items():
            device = normalize_device(key, "max_memory")
            if device == "disk":
                raise ValueError("max_memory: 'disk' has no size; give the offload folder as offload='/path/to/folder'")
            parsed = torch.device(device)
            if parsed.type not in ("cuda", "cpu", "mps"):
                raise ValueError(f"max_memory: {device} is not a device accelerate plans for (cuda:N, mps, cpu)")
            if isinstance(size, bool) or not isinstance(size, (int, str)):
                raise ValueError(f"max_memory[{key!r}] = {size!r}: give bytes (an int) or a size string like '20GiB'")
            try:
                nbytes = convert_file_size_to_int(size)
            except ValueError as err:
                raise ValueError(f"max_memory[{key!r}] = {size!r} is not a size; give bytes (an int) or a string like "
                                 "'20GiB', '512MiB', '16GB'") from err
            if nbytes <= 0:
                raise ValueError(f"max_memory[{key!r}] = {size!r}: the size must be positive")
            out[parsed.index if parsed.type == "cuda" else parsed.type] = nbytes
        out = get_max_memory(out)  # sorted: accelerators first, then mps, cpu
    if offload == "cpu" and "cpu" not in out:
        out["cpu"] = psutil.virtual_memory().available
    return out


def _module(model: nn.Module, name: str) -> nn.Module:
    return model if name == "" else model.get_submodule(name)


def _has_tensors(model: nn.Module, name: str) -> bool:
    """False for modules without weights or buffers (hook points): they need no device hook."""
    try:
        module = _module(model, name)
    except AttributeError:  # a parameter entry (accelerate splits a module with children into them)
        return True
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**27 else f"{n / 2**20:.2f} MiB"


def _offload_folder(offload: Any) -> Path | None:
    if offload is None or offload == "cpu":
        return None
    if not isinstance(offload, (str, os.PathLike)) or str(offload) in ("", "disk"):
        raise ValueError(f"offload must be None, 'cpu' or the path of a folder for disk offload, got {offload!r}")
    return Path(offload)


def device_bytes(model: nn.Module, plan: Mapping[str, str]) -> dict[str, int]:
    """Bytes of parameters and buffers per device of a plan (tied tensors counted once, where they live)."""
    out: dict[str, int] = {}
    seen: set[int] = set()
    for name, device in plan.items():
        module = _module(model, name)
        for t in [*module.parameters(), *module.buffers()]:
            if id(t) not in seen:
                seen.add(id(t))
                out[device] = out.get(device, 0) + t.numel() * t.element_size()
    return out


@contextlib.contextmanager
def _untied(model: nn.Module):
    """Every tied weight but its first name swapped for an empty meta tensor while accelerate plans; yields
    {other name: first name}. (accelerate 1.15's tie handling matches names as substrings: "embed." is found in
    "unembed.weight", and planning a model whose W_E and W_U are tied fails with an IndexError.)"""
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    swapped = []
    for names in groups.values():
        for name in names[1:]:
            module_name, _, attr = name.rpartition(".")
            module = _module(model, module_name)
            old = module._parameters[attr]
            module._parameters[attr] = nn.Parameter(torch.empty(0, device="meta", dtype=old.dtype), requires_grad=False)
            swapped.append((module, attr, old, name, names[0]))
    try:
        yield {name: first for _, _, _, name, first in swapped}
    finally:
        for module, attr, old, _, _ in swapped:
            module._parameters[attr] = old


def _owner(plan: Mapping[str, Any], tensor_name: str) -> str:
    """The plan entry holding ``tensor_name`` (the longest matching prefix)."""
    owners = [n for n in plan if n == "" or tensor_name == n or tensor_name.startswith(n + ".")]
    if not owners:
        raise KeyError(f"the plan gives no device to {tensor_name}")
    return max(owners, key=len)


def plan_device_map(model: nn.Module, max_memory: Mapping | None = None, offload: Any = None) -> dict[str, str]:
    """accelerate's plan for ``model`` (meta is fine, at the load dtype): {module name: device}, blocks never split.

    Modules that fit nowhere in ``max_memory`` go to "disk" when ``offload`` is a folder; otherwise this raises
    with the sizes. accelerate keeps room for the largest block free on the first accelerator (and on the CPU) to
    bring offloaded weights in, so a device holds at most its max_memory minus that block."""
    from accelerate import infer_auto_device_map
    from accelerate.utils.modeling import clean_device_map, compute_module_sizes, get_max_layer_size

    memory = accelerate_max_memory(max_memory, offload)
    classes = no_split_classes(model)
    with _untied(model) as aliases:
        raw = infer_auto_device_map(model, max_memory=dict(memory), no_split_module_classes=classes, clean_result=False)
    for alias, first in aliases.items():  # a tied weight lives where its first name went, at no extra cost
        raw[_owner(raw, alias)] = raw[_owner(raw, first)]
    raw = clean_device_map(dict(raw))
    plan = {name: normalize_device(device) for name, device in raw.items() if _has_tensors(model, name)}
    if "disk" in plan.values() and _offload_folder(offload) is None:
        sizes = compute_module_sizes(model)
        disk = [name for name, device in plan.items() if device == "disk"]
        largest, names = get_max_layer_size(list(model.named_children()), sizes, classes)
        given = ", ".join(f"{normalize_device(k)} {_gib(v)}" for k, v in memory.items())
        raise ValueError(
            f"the model does not fit in max_memory ({given}): {format_names(disk)} "
            f"({_gib(sum(sizes[n] for n in disk))} of {_gib(sizes[''])}) got no device. Give more memory, let CPU RAM "
            f"hold the rest (offload='cpu'), or offload to disk (offload='/path/to/folder'). accelerate keeps "
            f"{_gib(largest)} (the largest module kept whole: {names[0]}) free on the first device and the CPU for "
            "offloaded weights.")
    return plan


def check_device_map(model: nn.Module, device_map: Mapping, offload: Any = None) -> dict[str, str]:
    """A user's {module name: device}, checked against the model: names that exist, devices that parse, every
    weight covered once, no block split, tied weights together, a folder for "disk". Returns it normalised."""
    if not isinstance(device_map, Mapping) or not device_map:
        raise ValueError(f"device_map must be 'auto' or a non-empty dict {{module name: device}}, got {device_map!r}")
    modules = dict(model.named_modules())
    plan: dict[str, str] = {}
    for name, device in device_map.items():
        if not isinstance(name, str) or name not in modules:
            close = difflib.get_close_matches(str(name), [m for m in modules if m], n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(f"device_map names {name!r}, which is not a module of this model.{hint} Map top-level "
                             "modules (embed, vision, projector, rotary, ln_final, unembed) and blocks.N; "
                             "hooked_vlm.devices.plan_device_map(model, max_memory) shows a valid map")
        plan[name] = normalize_device(device, f"device_map[{name!r}]")
    names = sorted(plan)
    for outer in names:
        inner = [n for n in names if n != outer and (outer == "" or n.startswith(outer + "."))]
        if inner:
            what = repr(outer) if outer else "the whole model ('')"
            raise ValueError(f"device_map maps {what} and, inside it, {inner[0]!r}; give each module one device")
    classes = set(no_split_classes(model))
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts)):
            owner = ".".join(parts[:i])
            if type(modules[owner]).__name__ in classes:
                raise ValueError(f"device_map entry {name!r} splits {owner!r} ({type(modules[owner]).__name__}), which "
                                 f"stays on one device; map {owner!r} as a whole")
    covered = lambda tensor_name: any(n == "" or tensor_name.startswith(n + ".") for n in plan)  # noqa: E731
    missing = [n for n in loadable_tensors(model) if not covered(n)]
    if missing:
        raise ValueError(f"device_map gives no device to {len(missing)} weight(s): {format_names(missing)}; add "
                         "their modules (or use device_map='auto')")
    device_of = {}
    for name, device in plan.items():
        for tname, t in _module(model, name).named_parameters(remove_duplicate=False):
            device_of.setdefault(id(t), []).append((f"{name}.{tname}".lstrip("."), device))
    for places in device_of.values():
        if len({d for _, d in places}) > 1:
            raise ValueError(f"{' and '.join(n for n, _ in places)} are one tied weight (tie_word_embeddings) but the "
                             f"device_map puts them on {' and '.join(d for _, d in places)}; map their modules to "
                             "the same device")
    if "disk" in plan.values() and _offload_folder(offload) is None:
        raise ValueError(f"device_map puts {format_names([n for n, d in plan.items() if d == 'disk'])} on 'disk'; "
                         "give the folder for their weights: offload='/path/to/folder'")
    return plan


def format_names(names: list[str]) -> str:
    """'embed, blocks.0-13, ln_final': consecutive blocks.N collapsed into ranges."""
    out: list[str] = []
    run: list[tuple[str, int]] = []

    def flush() -> None:
        if run:
            prefix, first, last = run[0][0], run[0][1], run[-1][1]
            out.append(f"{prefix}{first}" if first == last else f"{prefix}{first}-{last}")
            run.clear()

    for name in names:
        head, _, tail = name.rpartition(".")
        if tail.isdigit() and run and run[-1][0] == head + "." and run[-1][1] + 1 == int(tail):
            run.append((head + ".", int(tail)))
            continue
        flush()
        if tail.isdigit():
            run.append((head + ".", int(tail)))
        else:
            out.append(name)
    flush()
    return ", ".join(out)


def format_device_map(plan: Mapping[str, str], sizes: Mapping[str, int] | None = None) -> list[str]:
    """One line per device: 'cuda:0: embed, vision, projector, blocks.0-13 (12.10 GiB)'."""
    by_device: dict[str, list[str]] = {}
    for name, device in plan.items():
        by_device.setdefault(device, []).append(name or "(whole model)")
    return [f"{device}: {format_names(names)}" + (f" ({_gib(sizes[device])})" if sizes and device in sizes else "")
            for device, names in by_device.items()]


def main_device(plan: Mapping[str, str]) -> str:
    """Where inputs go and offloaded modules run: the embedding's device, else the map's first accelerator, else cpu."""
    embed = next((d for n, d in plan.items() if n in ("", "embed")), None)
    if embed is not None and embed not in OFFLOADED:
        return embed
    return next((d for d in plan.values() if d not in OFFLOADED), "cpu")


def execution_device(model: nn.Module, name: str) -> torch.device:
    """The device module or hook point ``name`` computes on under the model's device map (model.device without one)."""
    plan = getattr(model, "device_map", None)
    if not plan:
        return model.device
    owners = [n for n in plan if n == "" or name == n or name.startswith(n + ".")]
    if not owners:
        return model.device
    device = plan[max(owners, key=len)]
    return model.device if device in OFFLOADED else torch.device(device)


class Placement:
    """One load under a device map: materialises the planned modules, writes disk-offloaded tensors, dispatches."""

    def __init__(self, model: nn.Module, plan: dict[str, str], offload: Any = None):
        self.plan = plan
        self.main = main_device(plan)
        for device in set(plan.values()):
            check_available(device)
        self.folder = _offload_folder(offload) if "disk" in plan.values() else None
        self.index: dict[str, dict] = {}
        self._aliases: dict[str, list[str]] | None = None
        self.model = model

    def materialize(self) -> None:
        """Empty tensors on each module's device; "disk" modules keep their parameters on meta (buffers on the
        main device, where they are used)."""
        for name, device in self.plan.items():
            module = _module(self.model, name)
            if device == "disk":
                for sub in module.modules():
                    for key, buf in sub._buffers.items():
                        if buf is not None:
                            sub._buffers[key] = torch.empty_like(buf, device=self.main)
            else:
                module.to_empty(device=device)
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)

    def offload_tensor(self, ours: str, tensor: torch.Tensor, param: torch.Tensor) -> None:
        """Write one checkpoint tensor of a disk-offloaded parameter (under every name it is tied to)."""
        from accelerate.utils import offload_weight

        if self.folder is None:
            raise RuntimeError(f"{ours} is on the meta device but the device map has no disk offload; a loader bug")
        if self._aliases is None:  # after the loader's untie step: tie groups are final
            groups: dict[int, list[str]] = {}
            for n, t in loadable_tensors(self.model).items():
                groups.setdefault(id(t), []).append(n)
            self._aliases = {n: names for names in groups.values() for n in names}
        value = tensor.to(param.dtype).contiguous()
        for name in self._aliases.get(ours, [ours]):
            self.index = offload_weight(value, name, str(self.folder), index=self.index)

    def dispatch(self) -> None:
        """accelerate's hooks (nothing to attach for a one-device map); records the map on the model."""
        from accelerate import dispatch_model

        model = self.model
        if self.folder is not None:
            (self.folder / "index.json").write_text(json.dumps(self.index, indent=1))  # this load's weights only
        if len(set(self.plan.values())) > 1 or self.folder is not None:
            # preload: an offloaded block brings ALL its weights in for its forward, so hooks inside it can read them
            dispatch_model(model, device_map=dict(self.plan), main_device=self.main,
                           offload_dir=None if self.folder is None else str(self.folder),
                           preload_module_classes=no_split_classes(model))
        model._main_device = torch.device(self.main)
        model.device_map = dict(self.plan)
        model.cfg.device = self.main


def place(model: nn.Module, device_map: Any, max_memory: Mapping | None = None, offload: Any = None) -> Placement:
    """Plan (device_map="auto") or check (a dict) the map of ``model`` (on meta, at the load dtype), materialise it."""
    if isinstance(device_map, str):
        if device_map != "auto":
            raise ValueError(f"device_map must be 'auto' or a dict {{module name: device}}, got {device_map!r} (for "
                             "one device use device=...)")
        plan = plan_device_map(model, max_memory, offload)
    else:
        if max_memory is not None:
            raise ValueError("max_memory plans device_map='auto'; a device_map dict already says where each module goes")
        plan = check_device_map(model, device_map, offload)
    placement = Placement(model, plan, offload)
    placement.materialize()
    return placement


def parse_max_memory(text: str) -> dict[str, str]:
    """'cuda:0=20GiB,cuda:1=20GiB,cpu=64GiB' (the CLI's --max-memory) -> {"cuda:0": "20GiB", ...}."""
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        device, sep, size = item.partition("=")
        if not sep or not device.strip() or not size.strip():
            raise ValueError(f"--max-memory item {item!r} is not DEVICE=SIZE; e.g. cuda:0=20GiB,cuda:1=20GiB,cpu=64GiB")
        out[device.strip()] = size.strip()
    if not out:
        raise ValueError("--max-memory is empty; e.g. cuda:0=20GiB,cuda:1=20GiB,cpu=64GiB")
    return out


def suggest_device_map(model: nn.Module, name: str, max_memory: Mapping, offload: Any = None,
                       dtype: torch.dtype = torch.bfloat16) -> tuple[dict[str, str] | None, list[str]]:
    """(plan, report lines) for ``hooked-vlm inspect --max-memory``: the plan per device with its bytes and the
    ``from_pretrained`` call that loads it; (None, [why]) when the model does not fit. ``model`` lives on meta."""
    model = model.to(dtype)
    try:
        plan = plan_device_map(model, max_memory, offload)
    except ValueError as err:
        return None, [f"does not fit: {err}"]
    call = (f"HookedVLM.from_pretrained({name!r}, dtype={dtype}, device_map='auto', "
            f"max_memory={dict(max_memory)!r}" + (f", offload={str(offload)!r})" if offload is not None else ")"))
    return plan, format_device_map(plan, device_bytes(model, plan)) + [f"load it with: {call}"]
