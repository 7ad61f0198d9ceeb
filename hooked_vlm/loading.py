"""Checkpoint resolution and streamed safetensors loading.

The model is built on the meta device, cast to the target dtype there, materialised empty on the
target device, then filled tensor by tensor from the safetensors files: no HF model is built,
no full-precision copy of the weights is made. Hub ids and local folders take the same path
(a hub id is first resolved to its local snapshot folder).
"""

from __future__ import annotations

import difflib
import json
import os
import struct
from pathlib import Path
from typing import Any

import torch

from .processors import PROCESSOR_FILES, TOKENIZER_FILES, has_files, load_processor_or_standin

CHECKPOINT_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja"]


class CheckpointNotFoundError(FileNotFoundError):
    """A name that is neither a local folder, a shipped toy, nor a checkpoint reachable on the HF hub."""


def resolve_checkpoint(name_or_path: str, revision: str | None = None, local_files_only: bool = False) -> Path:
    """A local folder as is; a shipped toy name; otherwise a hub id, downloaded (safetensors + configs only) to the
    HF cache. A name that is none of the three raises :class:`CheckpointNotFoundError` saying what was tried."""
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
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RevisionNotFoundError

    try:
        folder = snapshot_download(str(name_or_path), revision=revision, allow_patterns=CHECKPOINT_PATTERNS,
                                   local_files_only=local_files_only)
    except GatedRepoError as err:  # the repo exists: access, not the name, is the problem
        raise PermissionError(f"{name_or_path} is a gated hub repository: accept its terms on huggingface.co and log "
                              f"in (`hf auth login`), then retry ({err})") from err
    except RevisionNotFoundError as err:
        raise CheckpointNotFoundError(f"hub repository {name_or_path} has no revision {revision!r} ({err})") from err
    except (HFValidationError, OSError) as err:  # RepositoryNotFound, LocalEntryNotFound, offline, connection errors
        raise CheckpointNotFoundError(_not_found_message(str(name_or_path), path, err, local_files_only)) from err
    return Path(folder)


def _not_found_message(name: str, path: Path, err: Exception, local_files_only: bool) -> str:
    from .toy import closest_toy, shipped_toys

    hub = (f"not a valid hub id ({err})" if isinstance(err, ValueError)
           else f"not found in the local HF cache (local_files_only=True: {type(err).__name__})" if local_files_only
           else f"not reachable on the HF hub ({type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''})")
    toy = closest_toy(name)
    parent = path.parent if str(path.parent) not in ("", ".") else Path(".")
    near = difflib.get_close_matches(path.name, [p.name for p in parent.iterdir() if p.is_dir()], n=1, cutoff=0.75) \
        if parent.is_dir() else []
    hint = (f" Did you mean {toy!r}?" if toy else "") + (f" Did you mean the folder {str(parent / near[0])!r}?" if near else "")
    return (f"{name!r} is not a checkpoint: it is not a local folder (no directory {path.absolute()}), not a shipped toy "
            f"({', '.join(shipped_toys()) or 'none installed'}), and {hub}.{hint}")


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


def converter_for(folder: Path) -> tuple[Any, Any, Any]:
    """(HF config, converter, our config) of a checkpoint folder; raises when no converter takes it."""
    from converters import get_converter

    hf_config = load_hf_config(folder)
    architectures = getattr(hf_config, "architectures", None) or []
    if not architectures:
        raise ValueError(f"{folder}/config.json names no architectures; cannot tell which converter to use")
    converter = get_converter(architectures[0])
    return hf_config, converter, converter.make_config(hf_config)


def load_pretrained(cls: type, name_or_path: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                    processor: Any = "auto", revision: str | None = None, local_files_only: bool = False,
                    device_map: Any = None, max_memory: dict | None = None, offload: Any = None):
    """``device_map`` ("auto" with ``max_memory`` / ``offload``, or a dict): one model over several devices, CPU RAM
    and disk (``hooked_vlm.devices``); ``device`` is then the map's business and must stay at its default."""
    if device_map is None and (max_memory is not None or offload is not None):
        raise ValueError("max_memory and offload plan a device map: pass device_map='auto' (or a device_map dict)")
    if device_map is not None and str(device) != "cpu":
        raise ValueError(f"give device={device!r} or device_map=..., not both (a device map says where each module goes)")
    folder = resolve_checkpoint(name_or_path, revision=revision, local_files_only=local_files_only)
    _, converter, cfg = converter_for(folder)
    cfg.dtype, cfg.device, cfg.model_name = dtype, str(device), str(name_or_path)

    with torch.device("meta"):
        model = cls(cfg)
    model = model.to(dtype=dtype)
    placement = None
    if device_map is None:
        model = model.to_empty(device=device)
    else:
        from .devices import place

        placement = place(model, device_map, max_memory=max_memory, offload=offload)  # each module on its device
    model.tie_weights()  # to_empty gives each module its own tensor; re-share tied ones
    for module in model.modules():
        if hasattr(module, "reset_buffers"):
            module.reset_buffers()
    fill_from_safetensors(model, folder, converter.make_keymap(cfg),
                          offload=None if placement is None else placement.offload_tensor)
    if placement is not None:
        placement.dispatch()
    model.eval()
    if processor == "auto":  # a missing / failing processor gives a stand-in that says why (hooked_vlm.processors)
        processor = load_processor_or_standin(folder, converter.load_processor or load_auto_processor)
    model.processor = processor
    if getattr(converter, "finalize", None) is not None:
        converter.finalize(model.cfg, processor)
    return model


def load_auto_processor(folder: str) -> Any:
    """The checkpoint's HF processor; its tokenizer alone when it has no image processor; None without either.

    Failures propagate (``load_processor_or_standin`` turns them into a stand-in that names the cause)."""
    from transformers import AutoProcessor, AutoTokenizer

    path = Path(folder)
    if has_files(path, PROCESSOR_FILES):
        return AutoProcessor.from_pretrained(folder)
    if has_files(path, TOKENIZER_FILES):
        return AutoTokenizer.from_pretrained(folder)
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


from .tensor_mapping import TensorMapping, loadable_tensors, map_checkpoint_tensors  # noqa: E402  (the walk)


def fill_from_safetensors(model: torch.nn.Module, folder: Path, keymap: Any, offload: Any = None) -> TensorMapping:
    """Copy every checkpoint tensor into its parameter; fail on unused tensors, misshaped ones and unset parameters.

    The checks are the KeyMap walk :func:`hooked_vlm.tensor_mapping.map_checkpoint_tensors` (``inspect`` runs the
    same one on headers), done on the headers before any weight is read. Parameters left on the meta device
    (disk-offloaded modules of a device map) go to ``offload(our name, tensor, parameter)`` instead, one at a time."""
    targets = loadable_tensors(model)
    files = [SafetensorsFile(f) for f in safetensors_files(folder)]
    file_of = {key: sf for sf in files for key in sf.keys()}
    mapping = map_checkpoint_tensors(model, keymap, {key: sf.shape(key) for key, sf in file_of.items()})
    mapping.raise_if_bad(folder)
    if any(_untie_if_different(model, group, file_of, keymap) for group in mapping.tied_twice):
        targets = loadable_tensors(model)
    with torch.no_grad():
        for sf in files:
            items = [(key, ours) for key, ours in mapping.plan if file_of[key] is sf]
            if not items:
                continue
            with open(sf.path, "rb") as handle:
                for key, ours in items:
                    param = targets[ours]
                    index = ours.index if hasattr(ours, "slot") else None  # a slice (converters.base.Part)
                    if index is not None:
                        if param.is_meta:
                            raise NotImplementedError(f"{ours} is filled from several checkpoint tensors ({key} is "
                                                      "one); offloading such a parameter to disk is not supported")
                        param.data[index].copy_(sf.read_into(handle, key))
                        continue
                    fn = keymap.transform(ours)
                    tensor = sf.read_into(handle, key, dest=param.data if fn is None and not param.is_meta else None)
                    if fn is not None:
                        tensor = fn(tensor)
                    if param.is_meta:
                        if offload is None:
                            raise RuntimeError(f"{ours} is on the meta device; materialise the model before loading")
                        offload(ours, tensor, param)
                        continue
                    if tensor is not param.data:
                        param.copy_(tensor)
    return mapping


def _read(sf: SafetensorsFile, key: str, keymap: Any, ours: str) -> torch.Tensor:
    with open(sf.path, "rb") as handle:
        tensor = sf.read_into(handle, key)
    fn = keymap.transform(ours)
    return tensor if fn is None else fn(tensor)


def _untie_if_different(model: torch.nn.Module, group: dict[str, str], file_of: dict, keymap: Any) -> bool:
    """The config ties these parameters but the checkpoint holds a tensor for several of them. Equal values: keep
    them tied. Different values: untie, each name gets its own parameter (HF's from_pretrained does the same: a
    config that does not state tie_word_embeddings may default to True while the checkpoint has its own lm_head)."""
    import warnings

    (first, first_key), *rest = group.items()
    reference = _read(file_of[first_key], first_key, keymap, first)
    if all(torch.equal(reference, _read(file_of[key], key, keymap, ours)) for ours, key in rest):
        return False
    warnings.warn(f"config.json ties {', '.join(group)} but the checkpoint holds different tensors for them "
                  f"({', '.join(group.values())}); they are NOT tied (as HF's from_pretrained does). Set "
                  "tie_word_embeddings=false in config.json to silence this")
    for ours, _ in rest:
        module_name, _, attr = ours.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        old = getattr(module, attr)
        setattr(module, attr, torch.nn.Parameter(torch.empty_like(old), requires_grad=old.requires_grad))
    cfg = getattr(model, "cfg", None)
    if getattr(cfg, "tie_word_embeddings", False):  # HookedVLM's only tie is W_E / W_U: record that it is gone
        cfg.tie_word_embeddings = False
    return True
