"""What LLaVA-NeXT and LLaVA-OneVision share: a CLIP or SigLIP tower on tiles, an MLP projector with an
``image_newline`` embedding, a Llama / Mistral / Qwen2 LM; the "anyres" image pipeline."""

from __future__ import annotations

import re
from typing import Any

from hooked_vlm.config import HookedVLMConfig, ProjectorConfig, TokenRoles

from ._clip import clip_aliases, clip_ignored, clip_rules, clip_vision_config
from ._decoder import decoder_config, decoder_rules
from ._siglip import siglip_ignored, siglip_rules, siglip_vision_config
from .base import KeyMap, UnsupportedConfigError, check_fields, check_legacy_vocab_size
from .llava import LLAVA_ALIASES, feature_layers

ANYRES_FIELDS = {"image_token_index", "image_token_id", "projector_hidden_act", "vision_feature_layer",
                 "vision_feature_select_strategy", "image_grid_pinpoints", "image_seq_length",
                 "multimodal_projector_bias", "tie_word_embeddings", "ignore_index",
                 "use_image_newline_parameter",  # in hub configs; HF's code always uses image_newline
                 "vocab_size"}  # legacy copy of text_config.vocab_size (checked equal below)


def anyres_config(hf: Any, architecture: str, more_fields: set[str], extra: dict) -> HookedVLMConfig:
    check_fields(hf, ANYRES_FIELDS | more_fields, type(hf).__name__)
    check_legacy_vocab_size(hf)
    vc = hf.vision_config
    layers, select = feature_layers(hf), hf.vision_feature_select_strategy
    if vc.model_type == "clip_vision_model":
        if select != "default":
            raise UnsupportedConfigError(
                f"{type(hf).__name__}: vision_feature_select_strategy={select!r} with a CLIP tower; anyres needs "
                "'default': 'full' keeps CLIP's class token, and the tile grid has no room for it (HF's own "
                "reshape into tiles fails)")
        vision = clip_vision_config(vc, layers, select)
    elif vc.model_type == "siglip_vision_model":
        vision = siglip_vision_config(vc, layers, select)
    else:
        raise UnsupportedConfigError(f"{type(hf).__name__}: vision_config.model_type={vc.model_type!r} is a tower this "
                                     "converter does not build; supported: clip_vision_model, siglip_vision_model")
    text = decoder_config(hf.text_config)
    tc = hf.text_config
    return HookedVLMConfig(
        architecture=architecture,
        text=text,
        d_vocab=tc.vocab_size,
        vision=vision,
        projector=ProjectorConfig(d_in=vision.tower.d_model * len(vision.feature_layers), d_out=text.d_model,
                                  act_fn=hf.projector_hidden_act, bias=hf.multimodal_projector_bias, kind="anyres_mlp"),
        roles=TokenRoles(image_token_id=hf.image_token_id, pad_token_id=tc.pad_token_id,
                         bos_token_id=tc.bos_token_id, eos_token_id=tc.eos_token_id),
        tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False) or getattr(tc, "tie_word_embeddings", False)),
        extra={"image_pipeline": "anyres", "image_grid_pinpoints": [list(p) for p in hf.image_grid_pinpoints], **extra},
    )


def anyres_keymap(cfg: HookedVLMConfig) -> KeyMap:
    tower = "model.vision_tower"
    siglip = not cfg.vision.class_token
    return KeyMap(
        aliases=LLAVA_ALIASES + [(r"^image_newline$", "model.image_newline")] + clip_aliases(tower),
        rules=decoder_rules("model.language_model") + (siglip_rules(tower) if siglip else clip_rules(tower)) + [
            (r"model\.multi_modal_projector\.(linear_1|linear_2)\.(weight|bias)", r"projector.\1.\2"),
            (re.escape("model.image_newline"), "projector.image_newline"),
        ],
        ignored=siglip_ignored(tower) if siglip else clip_ignored(tower),
    )
