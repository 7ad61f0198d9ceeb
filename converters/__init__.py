"""One converter module per HF family; the registry is keyed by HF ``architectures[0]``."""

from __future__ import annotations

import importlib

from .base import Converter, UnsupportedConfigError

#: family modules; each defines CONVERTER. Adding a family = one module + one line here.
FAMILY_MODULES = [
    "converters.llava",
    "converters.qwen2_vl",
    "converters.idefics3",
    "converters.llava_next",
    "converters.llava_onevision",
    "converters.mistral3",
    "converters.chameleon",
    "converters.emu3",
    "converters.janus",
    "converters.gemma3",
    "converters.qwen3_vl",
    "converters.glm4v",
    "converters.paligemma",
    "converters.internvl",
    "converters.idefics2",
    "converters.aya_vision",
    "converters.cohere2_vision",
    "converters.qwen3_5",
    "converters.lfm2_vl",
    "converters.vipllava",
    "converters.lighton_ocr",
    "converters.llava_next_video",
    "converters.deepseek_vl",
    "converters.ovis2",
    "converters.deepseek_vl_hybrid",
    "converters.got_ocr2",
    "converters.mllama",
    "converters.gemma4",
    "converters.exaone4_5",
    "converters.hunyuan_vl",
    "converters.llama4",
    "converters.molmo2",
]

_REGISTRY: dict[str, Converter] | None = None


def registry() -> dict[str, Converter]:
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = {}
        for name in FAMILY_MODULES:
            conv = importlib.import_module(name).CONVERTER
            conv.module = conv.module or name
            for arch in conv.architectures:
                _REGISTRY[arch] = conv
    return _REGISTRY


def supported_architectures() -> list[str]:
    return sorted(registry())


def get_converter(architecture: str) -> Converter:
    reg = registry()
    if architecture not in reg:
        from .coverage import missing_parts

        missing = missing_parts(architecture)
        raise UnsupportedConfigError(
            f"architecture {architecture!r} is not supported. Supported architectures: {', '.join(sorted(reg))}"
            + (f". {architecture} lacks: {missing} (docs/families.md, coverage table)" if missing else "")
        )
    return reg[architecture]
