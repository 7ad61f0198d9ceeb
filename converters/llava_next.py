"""LlavaNextForConditionalGeneration (LLaVA-NeXT / 1.6: anyres tiles + image_newline; CLIP tower)."""

from __future__ import annotations

from typing import Any

from hooked_vlm.config import HookedVLMConfig

from ._anyres import anyres_config, anyres_keymap
from .base import Converter


def llava_next_config(hf: Any) -> HookedVLMConfig:
    return anyres_config(hf, "LlavaNextForConditionalGeneration", set(), {"input_keys": ("image_sizes",)})


CONVERTER = Converter(architectures=("LlavaNextForConditionalGeneration",), make_config=llava_next_config,
                      make_keymap=anyres_keymap)
