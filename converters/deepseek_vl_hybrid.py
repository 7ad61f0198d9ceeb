"""DeepseekVLHybridForConditionalGeneration (deepseek-community/deepseek-vl-7b-chat and -base): DeepSeek-VL with a
high-resolution SAM tower beside its SigLIP tower.

Parts, each by model_type: the low-res tower ``vision_config`` (``siglip_vision_model``, read after post_layernorm:
``vision.*``), the high-res tower ``high_res_vision_config`` (``sam_vision_model``: ``vision.high_res.*``), the LM
``text_config`` (Llama), and the projector kind ``hybrid_aligner`` (components/hybrid_aligner.py: HF's
``high_res_vision_neck``, ``high_res_vision_proj``, ``high_res_vision_alpha`` and ``aligner``). The high-res tower
returns its hidden state after its first global layer (``global_attn_indexes[0]``) beside its neck output, as HF's
``get_high_res_image_features`` reads it. Pipeline ``hybrid_vit``: one image token per SigLIP patch (the processor
repeats the image token ``num_image_tokens`` times), ``high_res_pixel_values`` beside ``pixel_values``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from hooked_vlm.config import HookedVLMConfig, ProjectorConfig, TokenRoles

from ._sam import neck_rules, sam_rules, sam_vision_config
from .base import Converter, KeyMap, UnsupportedConfigError, check_fields
from .llava_like import DECODER_LMS
from .parts import LM_PARTS, TOWER_PARTS, lm_part, tower_part

ARCH = "DeepseekVLHybridForConditionalGeneration"
FIELDS = {"image_token_id", "tie_word_embeddings"}


def make_config(hf: Any) -> HookedVLMConfig:
    where = type(hf).__name__
    check_fields(hf, FIELDS, where)
    tc, vc, hc = hf.text_config, hf.vision_config, hf.high_res_vision_config
    if hc.model_type != "sam_vision_model":
        raise UnsupportedConfigError(f"{where}: high_res_vision_config.model_type={hc.model_type!r} is a tower this "
                                     "converter does not build; supported: sam_vision_model")
    if not hc.global_attn_indexes:
        raise UnsupportedConfigError(f"{where}: high_res_vision_config.global_attn_indexes is empty; HF reads the "
                                     "state after the first global layer (global_attn_indexes[0])")
    lm = lm_part(tc, DECODER_LMS, where)
    low = tower_part(vc, ("siglip_vision_model",), where, last_hidden_state=True).config(vc, (-1,), "full")
    high = sam_vision_config(hc, feature_layers=(hc.global_attn_indexes[0] + 1,))  # +1: hidden_states[0] = embeddings
    text = lm.config(tc)
    if text.d_model % 2:
        raise UnsupportedConfigError(f"{where}: text_config.hidden_size={text.d_model} is odd; HF's aligner halves it")
    vision = dataclasses.replace(low, kind="hybrid_vit", extra={**low.extra, "high_res": high})
    projector = ProjectorConfig(
        d_in=low.tower.d_model, d_out=text.d_model, act_fn="gelu", bias=True, kind="hybrid_aligner",  # HF hard-codes both
        extra={"d_high": high.tower.d_model, "d_neck": high.extra["d_neck"], "high_grid": high.grid_size,
               "out_grid": low.grid_size})
    return HookedVLMConfig(
        architecture=ARCH, text=text, d_vocab=tc.vocab_size, vision=vision, projector=projector,
        roles=TokenRoles(image_token_id=hf.image_token_id, pad_token_id=tc.pad_token_id, bos_token_id=tc.bos_token_id,
                         eos_token_id=tc.eos_token_id),
        tie_word_embeddings=bool(hf.tie_word_embeddings or getattr(tc, "tie_word_embeddings", False)),
        extra={"image_pipeline": "hybrid_vit", "input_keys": ("high_res_pixel_values",),
               "parts": {"tower": vc.model_type, "high_res_tower": hc.model_type, "projector": "hybrid_aligner",
                         "lm": tc.model_type}})


def make_keymap(cfg: HookedVLMConfig) -> KeyMap:
    low = TOWER_PARTS["siglip_vision_model"].last_hidden_state
    lm = LM_PARTS[cfg.extra["parts"]["lm"]]
    m = re.escape("model")
    return KeyMap(
        rules=lm.rules("model.language_model") + low.rules("model.vision_model")
        + sam_rules("model.high_res_vision_model.vision_encoder", "vision.high_res")
        + neck_rules("model.high_res_vision_neck", "projector.high_res_neck") + [
            (rf"{m}\.high_res_vision_proj\.conv(1|2)\.weight", r"projector.high_res_conv\1.weight"),
            (rf"{m}\.high_res_vision_alpha", "projector.high_res_alpha"),
            (rf"{m}\.aligner\.(vision_proj|high_res_vision_proj|proj)\.(weight|bias)", r"projector.\1.\2")],
        ignored=low.ignored("model.vision_model"),
    )


CONVERTER = Converter(architectures=(ARCH,), make_config=make_config, make_keymap=make_keymap)
