"""LlavaOnevisionForConditionalGeneration (anyres_max_N tiles + image_newline; SigLIP tower; Qwen2 LM).

Images only: video inputs (pixel_values_videos) are refused by the forward's input check.
"""

from __future__ import annotations

from typing import Any

from hooked_vlm.config import HookedVLMConfig

from ._anyres import anyres_config, anyres_keymap
from .base import Converter, UnsupportedConfigError


def llava_onevision_config(hf: Any) -> HookedVLMConfig:
    aspect = hf.vision_aspect_ratio
    if not (isinstance(aspect, str) and aspect.startswith("anyres_max_") and aspect[len("anyres_max_"):].isdigit()):
        raise UnsupportedConfigError(f"LlavaOnevisionConfig: vision_aspect_ratio={aspect!r}; supported: 'anyres_max_<N>' "
                                     "(HF reads N, the most tiles before the grid is shrunk, from it)")
    cfg = anyres_config(hf, "LlavaOnevisionForConditionalGeneration", {"video_token_index", "video_token_id",
                                                                        "vision_aspect_ratio"},
                        {"input_keys": ("image_sizes", "batch_num_images"), "vision_aspect_ratio": aspect,
                         "multi_image_base_only": True})
    cfg.roles.extra["video"] = (hf.video_token_id,)
    return cfg


CONVERTER = Converter(architectures=("LlavaOnevisionForConditionalGeneration",), make_config=llava_onevision_config,
                      make_keymap=anyres_keymap)
