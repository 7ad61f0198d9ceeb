"""Exaone4_5_ForConditionalGeneration (EXAONE 4.5): images; videos refused.

Vision: the Qwen2.5-VL packed-patch ViT (RMSNorm, SwiGLU MLP, window attention outside ``fullatt_block_indexes``,
2-D axial rotary) with grouped key / value heads in its fused qkv (``vision_config.num_key_value_heads``), then
Qwen2.5-VL's patch merger (``converters/qwen2_vl.py`` ``vision_config``, tower part ``exaone4_5_vision``).
LM: EXAONE 4 (``converters/_exaone4.py``, LM part ``exaone4``: post-sublayer norms, q/k norms, sliding RoPE layers
and NoPE global layers). Positions: plain 1-D ``0, 1, 2, ...`` counting padding, as HF's ``Exaone4_5_Model`` (no
M-RoPE; ``get_rope_index`` raises there). The processor lays images out as Qwen2-VL's
(``<|image_pad|>`` x t * h * w / merge**2), without ``mm_token_type_ids``.
"""

from __future__ import annotations

from typing import Any

from hooked_vlm.config import HookedVLMConfig, TokenRoles

from ._qwen_inputs import load_qwen_inputs
from .base import Converter, KeyMap, UnsupportedConfigError, check_fields, check_legacy_vocab_size
from .parts import lm_part
from .qwen2_vl import ALIASES, vision_config, vision_rules

# vision_start / vision_end_token_id: HF's model never reads them, the processor's template puts them around each
# image; read as the boi / eoi span roles (as Qwen2-VL's)
TOP_FIELDS = {"image_token_id", "video_token_id", "tie_word_embeddings", "vision_start_token_id", "vision_end_token_id",
              "vocab_size"}  # vocab_size: a legacy copy of text_config.vocab_size, checked equal (check_legacy_vocab_size)
TOP_IGNORED = {"vision_token_id": "hub configs carry it; no HF code reads it (the image placeholder is image_token_id)"}
VISION_IGNORED = {"tokens_per_second": "spaces video frames in Qwen2.5-VL's 3-D positions; EXAONE 4.5 has 1-D positions "
                                       "(its get_rope_index raises), so HF never reads it"}
VIDEO_REFUSAL = ("video inputs are not supported for EXAONE 4.5 (images only): pass images as pixel_values + "
                 "image_grid_thw, or extract frames and pass them as images")
EXAONE_LMS = ("exaone4",)  # LM_PARTS keys (converters/parts.py) this family accepts


def exaone45_config(hf: Any) -> HookedVLMConfig:
    where = type(hf).__name__
    check_fields(hf, TOP_FIELDS, where, TOP_IGNORED)
    check_legacy_vocab_size(hf)
    tc = hf.text_config
    text = lm_part(tc, EXAONE_LMS, where).config(tc)
    vision, projector = vision_config(hf.vision_config, VISION_IGNORED)
    if projector.d_out != text.d_model:
        raise UnsupportedConfigError(
            f"{where}: vision_config.out_hidden_size={projector.d_out} differs from the LM width text hidden_size="
            f"{text.d_model}: HF's model could not splice the merged image features")
    return HookedVLMConfig(
        architecture=hf.architectures[0] if getattr(hf, "architectures", None) else "Exaone4_5_ForConditionalGeneration",
        text=text, d_vocab=tc.vocab_size, vision=vision, projector=projector,
        roles=TokenRoles(image_token_id=hf.image_token_id, boi_token_id=getattr(hf, "vision_start_token_id", None),
                         eoi_token_id=getattr(hf, "vision_end_token_id", None), pad_token_id=getattr(tc, "pad_token_id", None),
                         bos_token_id=getattr(tc, "bos_token_id", None), eos_token_id=getattr(tc, "eos_token_id", None)),
        tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False) or getattr(tc, "tie_word_embeddings", False)),
        extra={"image_pipeline": "qwen_vl", "lm_model_type": tc.model_type, "input_keys": ("image_grid_thw",),
               "refused_inputs": {"pixel_values_videos": VIDEO_REFUSAL, "video_grid_thw": VIDEO_REFUSAL}},
    )


def exaone45_keymap(cfg: HookedVLMConfig) -> KeyMap:
    from .parts import LM_PARTS

    return KeyMap(aliases=ALIASES, rules=LM_PARTS[cfg.extra["lm_model_type"]].rules("model.language_model")
                  + vision_rules("model.visual", gated=True))


CONVERTER = Converter(
    architectures=("Exaone4_5_ForConditionalGeneration",),
    make_config=exaone45_config,
    make_keymap=exaone45_keymap,
    load_processor=lambda folder: load_qwen_inputs(folder, token_types=False),
)
