"""Checkpoint resolution and streamed safetensors loading.

The model is built on the meta device, cast to the target dtype there, materialised empty on the
target device, then filled tensor by tensor from the safetensors files: no HF model is built,
no full-precision copy of the weights is made. Hub ids and local folders take the same path
(a hub id is first resolved to its local snapshot folder).
"""

from __future__ import annotations

import json
import os
import warnings
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


def fill_from_safetensors(model: torch.nn.Module, folder: Path, keymap: Any) -> None:
    """Copy every checkpoint tensor into its parameter; fail on unused tensors and unset parameters."""
    from safetensors import safe_open

    params = dict(model.named_parameters(remove_duplicate=False))
    tied = {n for n, p in params.items() if any(p is q and m != n for m, q in params.items())}
    files = safetensors_files(folder)
    unused, plan = [], []
    for f in files:
        with _open(f, safe_open) as handle:
            for key in handle.keys():
                try:
                    ours = keymap.target(key)
                except KeyError:
                    unused.append(key)
                    continue
                if ours is not None:
                    if ours not in params:
                        raise KeyError(f"converter maps checkpoint tensor {key!r} to {ours!r}, which the model does not have")
                    plan.append((f, key, ours))
    if unused:
        raise ValueError(
            f"{len(unused)} checkpoint tensor(s) in {folder} are not used by the converter: "
            f"{', '.join(unused[:10])}{' ...' if len(unused) > 10 else ''}. The checkpoint does not match the "
            "architecture in config.json, or the converter is incomplete; refusing to load silently wrong weights."
        )
    loaded: set[str] = set()
    by_file: dict[Path, list[tuple[str, str]]] = {}
    for f, key, ours in plan:
        by_file.setdefault(f, []).append((key, ours))
    with torch.no_grad():
        for f, items in by_file.items():
            with _open(f, safe_open) as handle:
                for key, ours in items:
                    param = params[ours]
                    try:
                        tensor = handle.get_tensor(key)
                    except Exception as err:
                        raise OSError(f"could not read tensor {key!r} from {f}: {err}. The file is truncated or "
                                      "corrupt; download it again.") from err
                    fn = keymap.transform(ours)
                    if fn is not None:
                        tensor = fn(tensor)
                    if tuple(tensor.shape) != tuple(param.shape):
                        raise ValueError(f"checkpoint tensor {key!r} has shape {tuple(tensor.shape)}; "
                                         f"{ours} expects {tuple(param.shape)} (config.json does not match the weights)")
                    param.copy_(tensor.to(device=param.device, dtype=param.dtype))
                    loaded.add(ours)
    missing = [n for n in params if n not in loaded and not (n in tied and any(t in loaded for t in tied))]
    if missing:
        raise ValueError(
            f"{len(missing)} parameter(s) got no tensor from the checkpoint in {folder}: "
            f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}. The checkpoint is incomplete "
            "(a shard missing?) or does not match config.json."
        )


class _open:
    """safe_open with a clear error for truncated / corrupt files."""

    def __init__(self, path: Path, safe_open: Any):
        self.path, self.safe_open = path, safe_open

    def __enter__(self):
        try:
            self.handle = self.safe_open(str(self.path), framework="pt", device="cpu")
        except Exception as err:
            raise OSError(f"could not open {self.path}: {err}. The safetensors file is truncated or corrupt; "
                          "download it again.") from err
        return self.handle.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self.handle.__exit__(*exc)
