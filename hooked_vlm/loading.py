"""Checkpoint resolution and streamed safetensors loading.

The model is built on the meta device, cast to the target dtype there, materialised empty on the
target device, then filled tensor by tensor from the safetensors files: no HF model is built,
no full-precision copy of the weights is made. Hub ids and local folders take the same path
(a hub id is first resolved to its local snapshot folder).
"""

from __future__ import annotations

import json
import os
import re
import struct
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja"]


def resolve_checkpoint(name_or_path: str, revision: str | None = None, local_files_only: bool = False) -> Path:
    """A local folder as is; otherwise a hub id, downloaded (safetensors + configs only) to the HF cache."""
    path = Path(os.path.expanduser(str(name_or_path)))
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{name_or_path} is a file; give the checkpoint folder (with config.json) or a hub id")
    from .toy import toy_checkpoint_path

    toy = toy_checkpoint_path(str(name_or_path))
    if toy is not None:
        return toy
    from huggingface_hub import snapshot_download

    folder = snapshot_download(str(name_or_path), revision=revision, allow_patterns=CHECKPOINT_PATTERNS,
                               local_files_only=local_files_only)
    return Path(folder)


def safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [folder / f for f in sorted(set(weight_map.values()))]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        bins = sorted(folder.glob("*.bin"))
        hint = " (it has only PyTorch .bin files; convert them to safetensors first)" if bins else ""
        raise FileNotFoundError(f"no .safetensors weights in {folder}{hint}")
    return files


def load_hf_config(folder: Path) -> Any:
    from transformers import AutoConfig

    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder} has no config.json; is it an HF checkpoint folder?")
    return AutoConfig.from_pretrained(str(folder))


def load_pretrained(cls: type, name_or_path: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                    processor: Any = "auto", revision: str | None = None, local_files_only: bool = False):
    from converters import get_converter

    folder = resolve_checkpoint(name_or_path, revision=revision, local_files_only=local_files_only)
    hf_config = load_hf_config(folder)
    architectures = getattr(hf_config, "architectures", None) or []
    if not architectures:
        raise ValueError(f"{folder}/config.json names no architectures; cannot tell which converter to use")
    converter = get_converter(architectures[0])
    cfg = converter.make_config(hf_config)
    cfg.dtype, cfg.device = dtype, str(device)

    with torch.device("meta"):
        model = cls(cfg)
    model = model.to(dtype=dtype).to_empty(device=device)
    model.tie_weights()  # to_empty gives each module its own tensor; re-share tied ones
    for module in model.modules():
        if hasattr(module, "reset_buffers"):
            module.reset_buffers()
    fill_from_safetensors(model, folder, converter.make_keymap(cfg))
    model.eval()
    if processor == "auto":
        processor = (converter.load_processor or load_auto_processor)(str(folder))
    model.processor = processor
    if getattr(converter, "finalize", None) is not None:
        converter.finalize(model.cfg, processor)
    return model


def load_auto_processor(folder: str) -> Any:
    """The checkpoint's HF processor; its tokenizer alone when it has no image processor; else None."""
    from transformers import AutoProcessor, AutoTokenizer

    path = Path(folder)
    has_processor = (path / "processor_config.json").exists() or (path / "preprocessor_config.json").exists()
    has_tokenizer = (path / "tokenizer_config.json").exists() or (path / "tokenizer.json").exists()
    if not has_processor and not has_tokenizer:
        return None
    try:
        return AutoProcessor.from_pretrained(folder) if has_processor else AutoTokenizer.from_pretrained(folder)
    except Exception as err:  # a checkpoint without processor files is still usable with model(**inputs)
        warnings.warn(f"no HF processor could be loaded from {folder} ({type(err).__name__}: {err}); "
                      "model.prepare_inputs will not work, model(**inputs) will")
        return None


SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


class SafetensorsFile:
    """A minimal safetensors reader that reads each tensor's bytes straight into its destination.

    No mmap (whose touched pages count as resident memory) and no intermediate copy when the
    checkpoint dtype equals the parameter dtype on CPU; otherwise one tensor-sized buffer at a time.
    """

    def __init__(self, path: Path):
        self.path = path
        size = path.stat().st_size
        try:
            with open(path, "rb") as f:
                n = struct.unpack("<Q", f.read(8))[0]
                if n > size - 8:
                    raise ValueError(f"header length {n} exceeds the file size {size}")
                header = json.loads(f.read(n))
        except (ValueError, struct.error, UnicodeDecodeError) as err:
            raise OSError(f"could not read the safetensors header of {path}: {err}. The file is truncated or "
                          "corrupt; download it again.") from err
        header.pop("__metadata__", None)
        self.data_start = 8 + n
        self.entries: dict[str, dict] = header
        end = max((e["data_offsets"][1] for e in header.values()), default=0)
        if self.data_start + end > size:
            raise OSError(f"{path} is truncated: its header describes {self.data_start + end} bytes but the file has "
                          f"{size}. The safetensors file is truncated or corrupt; download it again.")

    def keys(self) -> list[str]:
        return list(self.entries)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.entries[key]["shape"])

    def read_into(self, f: Any, key: str, dest: torch.Tensor | None = None) -> torch.Tensor:
        """Read tensor ``key``; into ``dest`` directly when layouts allow, else into a fresh CPU tensor."""
        entry = self.entries[key]
        dtype = SAFETENSORS_DTYPES.get(entry["dtype"])
        if dtype is None:
            raise OSError(f"{self.path}: tensor {key!r} has unsupported dtype {entry['dtype']}")
        begin, end = entry["data_offsets"]
        shape = tuple(entry["shape"])
        numel = 1
        for d in shape:
            numel *= d
        if end - begin != numel * torch.empty((), dtype=dtype).element_size():
            raise OSError(f"{self.path}: tensor {key!r} has {end - begin} bytes for shape {shape}; the file is corrupt")
        direct = dest is not None and dest.dtype == dtype and dest.device.type == "cpu" and dest.is_contiguous()
        out = dest if direct else torch.empty(shape, dtype=dtype)
        f.seek(self.data_start + begin)
        buffer = out.view(-1).view(torch.uint8).numpy() if numel else None
        if numel and f.readinto(memoryview(buffer)) != end - begin:
            raise OSError(f"{self.path}: tensor {key!r} is cut short; the file is truncated or corrupt")
        return out


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
            ours = keymap.target(key)
        except KeyError:
            out.unused.append(key)
            continue
        if ours is None:
            out.ignored.append((key, _ignore_reason(keymap, key)))
            continue
        if ours not in targets:
            out.unknown_targets.append((key, ours))
            continue
        sources.setdefault(ours, []).append(key)
        out.plan.append((key, ours))
        expected = tuple(targets[ours].shape)
        fn = keymap.transform(ours)
        got = tuple(shape) if fn is None else tuple(fn(torch.empty(tuple(shape), device="meta")).shape)
        if got != expected:
            out.misshaped.append((key, ours, got, expected, fn is not None))
    out.duplicates = [(ours, keys) for ours, keys in sources.items() if len(keys) > 1]
    groups: dict[int, list[str]] = {}
    for name, tensor in targets.items():
        groups.setdefault(id(tensor), []).append(name)
    out.missing = [name for names in groups.values() if not any(n in sources for n in names) for name in names]
    return out


def _ignore_reason(keymap: Any, key: str) -> str:
    canonical = keymap.canonical(key)
    for pattern, reason in keymap.ignored:
        if re.fullmatch(pattern, canonical):
            return reason
    return "ignored"


def fill_from_safetensors(model: torch.nn.Module, folder: Path, keymap: Any) -> TensorMapping:
    """Copy every checkpoint tensor into its parameter; fail on unused tensors, misshaped ones and unset parameters."""
    targets = loadable_tensors(model)
    files = [SafetensorsFile(f) for f in safetensors_files(folder)]
    file_of = {key: sf for sf in files for key in sf.keys()}
    mapping = map_checkpoint_tensors(model, keymap, {key: sf.shape(key) for key, sf in file_of.items()})
    mapping.raise_if_bad(folder)
    with torch.no_grad():
        for sf in files:
            items = [(key, ours) for key, ours in mapping.plan if file_of[key] is sf]
            if not items:
                continue
            with open(sf.path, "rb") as handle:
                for key, ours in items:
                    param = targets[ours]
                    fn = keymap.transform(ours)
                    tensor = sf.read_into(handle, key, dest=param.data if fn is None else None)
                    if fn is not None:
                        tensor = fn(tensor)
                    if tensor is not param.data:
                        param.copy_(tensor)
    return mapping


def _is_persistent(model: torch.nn.Module, name: str) -> bool:
    module_name, _, buffer_name = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    return buffer_name not in module._non_persistent_buffers_set
