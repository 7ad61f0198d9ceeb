"""Will a checkpoint load, and will it fit? Answered from its json files and safetensors headers only.

    report = hooked_vlm.inspect_checkpoint("llava-hf/llava-1.5-7b-hf")   # or a local folder
    print(report.format()); report.loadable

A hub id fetches only the json / tokenizer / processor files (``snapshot_download`` with
json-and-tokenizer patterns) and the safetensors headers (``huggingface_hub.get_safetensors_metadata``,
HTTP range requests): no weight is downloaded. A local folder's headers are read from its files.
The model is built on the meta device and the checkpoint's tensor names and shapes go through
the same KeyMap walk as loading (:func:`hooked_vlm.loading.map_checkpoint_tensors`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .loading import (CHECKPOINT_PATTERNS, SAFETENSORS_DTYPES, SafetensorsFile, converter_for, load_auto_processor,
                      safetensors_files)
from .tensor_mapping import TensorMapping, _listing, map_checkpoint_tensors
from .components.mixers import layer_kinds
from .memory import activation_bytes, kv_cache_bytes, numel_bytes, recurrent_state_bytes, vision_activation_numels

#: what a hub inspect downloads: everything a checkpoint folder holds except its weights
METADATA_PATTERNS = [p for p in CHECKPOINT_PATTERNS if p != "*.safetensors"]
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
TOKENS = 1000  # memory figures are per this many LM positions, batch 1


@dataclass
class TowerReport:
    name: str  # "language model" | "vision tower"
    n_layers: int
    d_model: int
    n_heads: int
    n_key_value_heads: int
    d_head: int
    d_mlp: int


@dataclass
class CheckpointReport:
    """What ``inspect_checkpoint`` found. ``problems`` non-empty means the checkpoint would not load."""

    name: str
    source: str  # "local folder <path>" | "hub (headers only)"
    folder: Path | None = None  # where the json files are (a hub id: its metadata snapshot)
    architecture: str | None = None
    converter: str | None = None  # the converter module
    supported_architectures: list[str] = field(default_factory=list)
    n_parameters: int | None = None  # our model's parameters (tied ones once)
    checkpoint_tensors: int | None = None
    checkpoint_parameters: int | None = None  # sum of the header shapes' numel
    checkpoint_bytes: int | None = None  # sum of the tensors' stored sizes
    checkpoint_dtypes: dict[str, int] = field(default_factory=dict)  # safetensors dtype -> tensor count
    weight_bytes: dict[str, int] = field(default_factory=dict)  # dtype -> bytes of our parameters
    kv_cache_bytes_per_1k: dict[str, int] = field(default_factory=dict)
    # linear-attention (Gated DeltaNet) layers: their state per sequence, constant in tokens; empty without such layers
    recurrent_state_bytes: dict[str, int] = field(default_factory=dict)
    layer_kinds: dict[str, int] = field(default_factory=dict)  # LM layer kind (layer_types entry) -> count
    cache_bytes_per_1k: dict[str, int] = field(default_factory=dict)  # full LM run_with_cache, text positions
    cache_assumptions: str = ""
    vision_cache_bytes_per_image: dict[str, int] = field(default_factory=dict)  # vision + projector hooks, one image
    vision_cache_note: str = ""  # what was assumed, or "unknown: <reason>"
    n_hook_points: int | None = None
    towers: list[TowerReport] = field(default_factory=list)
    image_tokens_per_image: int | None = None
    image_tokens_note: str = ""  # the image size it was counted at, or "unknown: <reason>"
    mapping: TensorMapping | None = None
    device_map: dict[str, str] | None = None  # with max_memory: accelerate's plan (hooked_vlm.devices)
    device_map_lines: list[str] = field(default_factory=list)  # the plan per device, or why it does not fit
    problems: list[str] = field(default_factory=list)

    @property
    def loadable(self) -> bool:
        return not self.problems

    def format(self) -> str:
        return format_report(self)


def inspect_checkpoint(name_or_path: str, revision: str | None = None, max_memory: dict | None = None,
                       offload: Any = None, dtype: torch.dtype = torch.bfloat16) -> CheckpointReport:
    """Inspect a local checkpoint folder or a hub id without reading (or downloading) any weight.

    ``max_memory`` ({"cuda:0": "20GiB", "cpu": "64GiB"}; ``offload`` "cpu" or a folder): also plan a device map
    at ``dtype`` (``report.device_map``), the one ``from_pretrained(device_map="auto", ...)`` would load."""
    report = _inspect(name_or_path, revision)
    if max_memory is not None and report.n_parameters is not None:
        from .devices import suggest_device_map

        _, _, cfg = converter_for(report.folder)
        report.device_map, report.device_map_lines = suggest_device_map(meta_model(cfg), name_or_path, max_memory,
                                                                        offload, dtype)
        report.device_map_lines.insert(0, f"at {str(dtype).removeprefix('torch.')}, max_memory {max_memory}"
                                       + (f", offload {offload}" if offload is not None else ""))
    return report


def _inspect(name_or_path: str, revision: str | None) -> CheckpointReport:
    path = Path(os.path.expanduser(str(name_or_path)))
    if path.is_dir():
        folder, source = path, f"local folder {path}"
        try:
            shapes, dtypes = _local_headers(folder)
        except OSError as err:  # a missing shard, a truncated or corrupt header: loading would stop the same way
            report = build_report(str(name_or_path), source, folder, None, {})
            report.problems = [p for p in report.problems if not p.startswith("no .safetensors")] + [str(err)]
            return report
    else:
        from .toy import toy_checkpoint_path

        toy = toy_checkpoint_path(str(name_or_path))
        if toy is not None:
            folder, source = toy, f"shipped toy {toy}"
            shapes, dtypes = _local_headers(folder)
        else:
            source = "hub (json files and safetensors headers only)"
            try:
                folder = _hub_metadata_folder(str(name_or_path), revision)
                shapes, dtypes = _hub_headers(str(name_or_path), revision)
            except (OSError, ValueError) as err:  # hub errors are OSErrors; a malformed repo id is a ValueError
                from converters import supported_architectures

                problem = (f"{name_or_path} is not a local folder, not a shipped toy, and the hub could not give its "
                           f"files ({type(err).__name__}: {err})")
                return CheckpointReport(name=str(name_or_path), source=source, problems=[problem],
                                        supported_architectures=supported_architectures())
    return build_report(str(name_or_path), source, folder, shapes, dtypes)


def build_report(name: str, source: str, folder: Path, shapes: dict[str, tuple[int, ...]] | None,
                 dtypes: dict[str, str]) -> CheckpointReport:
    from converters import supported_architectures

    report = CheckpointReport(name=name, source=source, supported_architectures=supported_architectures())
    report.folder = folder
    if shapes is None:
        report.problems.append(f"no .safetensors weights found for {name}")
    else:
        report.checkpoint_tensors = len(shapes)
        report.checkpoint_parameters = sum(_numel(s) for s in shapes.values())
        report.checkpoint_bytes = sum(_numel(shapes[k]) * _dtype_size(d) for k, d in dtypes.items())
        for d in dtypes.values():
            report.checkpoint_dtypes[d] = report.checkpoint_dtypes.get(d, 0) + 1
    try:
        hf_config, converter, cfg = converter_for(folder)
    except (ValueError, OSError) as err:  # UnsupportedConfigError, a missing or unreadable config: loading stops alike
        report.problems.insert(0, str(err))
        report.architecture = _architecture_of(folder)
        return report
    report.architecture = hf_config.architectures[0]
    report.converter = converter.module or converter.make_config.__module__
    model = meta_model(cfg)
    report.n_parameters = sum(p.numel() for p in model.parameters())
    report.weight_bytes = {d: report.n_parameters * b for d, b in DTYPE_BYTES.items()}
    report.n_hook_points = len(model.hook_dict)
    report.towers = towers(cfg)
    report.kv_cache_bytes_per_1k = {d: kv_cache_bytes(cfg.text, TOKENS, b) for d, b in DTYPE_BYTES.items()}
    if recurrent_state_bytes(cfg.text, 4):
        report.recurrent_state_bytes = {d: recurrent_state_bytes(cfg.text, b) for d, b in DTYPE_BYTES.items()}
    for kind in layer_kinds(cfg.text):
        report.layer_kinds[kind] = report.layer_kinds.get(kind, 0) + 1
    per_dtype, assumptions = activation_bytes(model, TOKENS, DTYPE_BYTES)
    report.cache_bytes_per_1k, report.cache_assumptions = per_dtype, assumptions
    if cfg.vision is not None:
        numels, report.vision_cache_note = vision_activation_numels(model)
        if numels is not None:
            report.vision_cache_bytes_per_image = {d: numel_bytes(numels, b) for d, b in DTYPE_BYTES.items()}
    report.image_tokens_per_image, report.image_tokens_note = image_tokens(folder, converter, cfg)
    if shapes is not None:
        report.mapping = map_checkpoint_tensors(model, converter.make_keymap(cfg), shapes)
        try:
            report.mapping.raise_if_bad(name)
        except (KeyError, ValueError) as err:
            report.problems.append(str(err.args[0]) if isinstance(err, KeyError) else str(err))
    return report


def meta_model(cfg: Any) -> Any:
    """A HookedVLM on the meta device (no memory, no weights)."""
    from .model import HookedVLM

    with torch.device("meta"):
        return HookedVLM(cfg)


def towers(cfg: Any) -> list[TowerReport]:
    out = [_tower("language model", cfg.text)]
    tower = getattr(cfg.vision, "tower", None)  # VQ tokenizers have no transformer tower
    if tower is not None:
        out.append(_tower("vision tower", tower))
    return out


def _tower(name: str, t: Any) -> TowerReport:
    return TowerReport(name, t.n_layers, t.d_model, t.n_heads, t.n_key_value_heads, t.d_head, t.d_mlp)


def image_tokens(folder: Path, converter: Any, cfg: Any) -> tuple[int | None, str]:
    """Image placeholder tokens one image takes, counted by running the checkpoint's processor on a blank image."""
    if cfg.roles is None or cfg.vision is None:
        return None, "unknown: the model takes no images"
    try:
        processor = (converter.load_processor or load_auto_processor)(str(folder))
    except (OSError, ValueError, ImportError) as err:
        return None, f"unknown: the processor could not be loaded ({type(err).__name__}: {err})"
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None:
        return None, "unknown: no image processor could be loaded from the checkpoint's files"
    (h, w), how = default_image_size(image_processor)
    from PIL import Image

    token = getattr(processor, "image_token", None) or "<image>"
    try:
        out = processor(images=[Image.new("RGB", (w, h), (127, 127, 127))], text=[token], return_tensors="pt")
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as err:
        return None, f"unknown: the processor failed on a {w}x{h} image ({type(err).__name__}: {err})"
    n = int((out["input_ids"] == cfg.roles.image_token_id).sum())
    return n, f"a {w}x{h} image ({how}): the placeholder positions it fills in the prompt, counted from the processor's output"


def default_image_size(image_processor: Any) -> tuple[tuple[int, int], str]:
    """(height, width) the processor works at, and where that came from."""
    crop = _size_fields(getattr(image_processor, "crop_size", None))
    if getattr(image_processor, "do_center_crop", False) and "height" in crop and "width" in crop:
        return (crop["height"], crop["width"]), "the processor's crop_size"
    size = _size_fields(getattr(image_processor, "size", None))
    if "height" in size and "width" in size:
        return (size["height"], size["width"]), "the processor's size"
    dynamic = "min_pixels" in size or "max_pixels" in size or size.get("longest_edge", 0) > 8192  # pixel counts (Qwen)
    for key in ("longest_edge", "shortest_edge"):
        if key in size and not dynamic:
            return (size[key], size[key]), f"the processor's size[{key!r}]"
    return (448, 448), "the processor resizes dynamically, no default size: 448x448 assumed"


def _size_fields(size: Any) -> dict[str, int]:
    """A processor's size / crop_size (a dict, or transformers' SizeDict) without its unset fields."""
    if size is None:
        return {}
    items = size.items() if isinstance(size, dict) else vars(size).items()
    return {k: v for k, v in items if isinstance(v, int)}


def _numel(shape: Any) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _dtype_size(name: str) -> int:
    dtype = SAFETENSORS_DTYPES.get(name)
    if dtype is None:
        raise ValueError(f"unknown safetensors dtype {name!r}")
    return torch.empty((), dtype=dtype).element_size()


def _architecture_of(folder: Path) -> str | None:
    import json

    try:
        return (json.loads((folder / "config.json").read_text()).get("architectures") or [None])[0]
    except (OSError, ValueError):
        return None


def _local_headers(folder: Path) -> tuple[dict[str, tuple[int, ...]] | None, dict[str, str]]:
    try:
        files = safetensors_files(folder)
    except FileNotFoundError:
        return None, {}
    absent = [f.name for f in files if not f.exists()]
    if absent:  # an index naming shards that are not there: the load would stop on the first one
        raise FileNotFoundError(f"{folder}/model.safetensors.index.json names shard(s) that are not in the folder: "
                                f"{', '.join(absent)}; download them (or remove the stale index)")
    shapes, dtypes = {}, {}
    for path in files:
        sf = SafetensorsFile(path)
        for key in sf.keys():
            shapes[key], dtypes[key] = sf.shape(key), sf.entries[key]["dtype"]
    return shapes, dtypes


def _hub_metadata_folder(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, revision=revision, allow_patterns=METADATA_PATTERNS))


def _hub_headers(repo_id: str, revision: str | None) -> tuple[dict[str, tuple[int, ...]] | None, dict[str, str]]:
    from huggingface_hub import get_safetensors_metadata
    from huggingface_hub.errors import NotASafetensorsRepoError

    try:
        meta = get_safetensors_metadata(repo_id, revision=revision)
    except NotASafetensorsRepoError:
        return None, {}
    shapes, dtypes = {}, {}
    for file_meta in meta.files_metadata.values():
        for key, info in file_meta.tensors.items():
            shapes[key], dtypes[key] = tuple(info.shape), info.dtype
    return shapes, dtypes


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**27 else f"{n / 2**20:.2f} MiB"


def format_report(r: CheckpointReport) -> str:
    lines = [f"{r.name}  ({r.source})", f"  architecture:   {r.architecture or 'unknown'}"
             + (f"  -> converter {r.converter}" if r.converter else "")]
    if r.converter is None:
        lines.append(f"  supported architectures: {', '.join(r.supported_architectures)}")
    if r.n_parameters is not None:
        lines.append(f"  parameters:     {r.n_parameters:,} (ours)"
                     + (f"; checkpoint holds {r.checkpoint_parameters:,} in {r.checkpoint_tensors} tensors"
                        if r.checkpoint_parameters is not None else ""))
        lines.append("  weights:        " + ", ".join(f"{d} {_gib(b)}" for d, b in r.weight_bytes.items()))
    if r.checkpoint_bytes is not None:
        dtypes = ", ".join(f"{d} x{n}" for d, n in sorted(r.checkpoint_dtypes.items()))
        lines.append(f"  checkpoint:     {_gib(r.checkpoint_bytes)} on disk ({dtypes})")
    if r.kv_cache_bytes_per_1k:
        lines.append(f"  KV cache per {TOKENS} tokens: " + ", ".join(f"{d} {_gib(b)}" for d, b in r.kv_cache_bytes_per_1k.items()))
        if r.recurrent_state_bytes:
            stateful = ", ".join(f"{n} {kind}" for kind, n in (("linear-attention", r.layer_kinds.get("linear_attention", 0)),
                                                              ("short-conv", r.layer_kinds.get("conv", 0))) if n)
            lines.append(f"  recurrent state per sequence ({stateful} layers; constant, it does not grow with the "
                         "tokens): " + ", ".join(f"{d} {_gib(b)}" for d, b in r.recurrent_state_bytes.items())
                         + (" (the delta-rule state is float32 in every dtype)"
                            if r.layer_kinds.get("linear_attention", 0) else ""))
        lines.append(f"  run_with_cache per {TOKENS} tokens: " + ", ".join(f"{d} {_gib(b)}" for d, b in r.cache_bytes_per_1k.items()))
        lines.append(f"    ({r.cache_assumptions})")
    if r.vision_cache_note:
        sizes = ", ".join(f"{d} {_gib(b)}" for d, b in r.vision_cache_bytes_per_image.items())
        lines.append(f"  run_with_cache per image (vision side): {sizes + ' ' if sizes else ''}({r.vision_cache_note})")
    if r.n_hook_points is not None:
        lines.append(f"  hook points:    {r.n_hook_points}")
    for t in r.towers:
        kinds = f" ({', '.join(f'{n} {k}' for k, n in r.layer_kinds.items())})" \
            if t.name == "language model" and len(r.layer_kinds) > 1 else ""
        lines.append(f"  {t.name + ':':15s} {t.n_layers} layers{kinds}, d_model {t.d_model}, {t.n_heads} heads "
                     f"({t.n_key_value_heads} kv) x d_head {t.d_head}, d_mlp {t.d_mlp}")
    if r.image_tokens_note:
        n = "" if r.image_tokens_per_image is None else f"{r.image_tokens_per_image} for "
        lines.append(f"  image tokens per image: {n}{r.image_tokens_note}")
    m = r.mapping
    if m is not None:
        lines.append(f"  tensor mapping: {len(m.plan)} mapped, {len(m.ignored)} ignored by design, {len(m.unused)} unused, "
                     f"{len(m.missing)} missing, {len(m.misshaped)} misshaped")
        by_reason: dict[str, list[str]] = {}
        for key, reason in m.ignored:  # grouped by reason: every ignored tensor is accounted for, by name
            by_reason.setdefault(reason, []).append(key)
        for reason, keys in by_reason.items():
            lines.append(f"    ignored {keys[0]}: {reason}" if len(keys) == 1 else
                         f"    ignored {len(keys)} tensors ({_listing(keys, 4)}): {reason}")
        lines += [f"    unused {k}" for k in m.unused[:20]]
        lines += [f"    missing {k}" for k in m.missing[:20]]
        lines += [f"    misshaped {k} -> {ours}: {tuple(s)} vs {tuple(e)}" for k, ours, s, e, _ in m.misshaped[:20]]
        lines += [f"    duplicate {ours}: {', '.join(keys)}" for ours, keys in m.duplicates[:20]]
        lines += [f"    tied in config.json, but the checkpoint has {', '.join(g.values())}: loading compares them and "
                  "unties them if they differ (as HF does)" for g in m.tied_twice]
    if r.device_map_lines:
        lines.append(f"  device map {r.device_map_lines[0]}:")
        lines += [f"    {line}" for line in r.device_map_lines[1:]]
    lines.append("  result:         " + ("loads" if r.loadable else "WOULD NOT LOAD"))
    lines += [f"  problem: {p}" for p in r.problems]
    return "\n".join(lines)
