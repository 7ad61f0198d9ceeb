"""LlavaForConditionalGeneration (LLaVA-1.5: CLIP tower + MLP projector + Llama/Vicuna/Mistral/Qwen2 LM)."""

from __future__ import annotations

from typing import Any

from hooked_vlm.config import HookedVLMConfig, ProjectorConfig, TokenRoles

from ._clip import clip_aliases, clip_ignored, clip_rules, clip_vision_config
from ._pixtral import pixtral_marker_roles, pixtral_rules, pixtral_vision_config
from ._decoder import decoder_config, decoder_rules
from .base import Converter, KeyMap, UnsupportedConfigError, check_fields, check_legacy_vocab_size

LLAVA_FIELDS = {"image_token_index", "image_token_id", "projector_hidden_act", "vision_feature_layer",
                "vision_feature_select_strategy", "image_seq_length", "multimodal_projector_bias",
                "tie_word_embeddings", "ignore_index",
                "vocab_size"}  # legacy copy of text_config.vocab_size (checked equal)

# save_pretrained writes the legacy layout; the in-memory (and newer hub) layout is under "model."
LLAVA_ALIASES = [
    (r"^language_model\.model\.", "model.language_model."),
    (r"^language_model\.lm_head\.", "lm_head."),
    (r"^vision_tower\.", "model.vision_tower."),
    (r"^multi_modal_projector\.", "model.multi_modal_projector."),
]


def feature_layers(hf: Any) -> tuple[int, ...]:
    layer = hf.vision_feature_layer
    return (layer,) if isinstance(layer, int) else tuple(layer)


def llava_config(hf: Any) -> HookedVLMConfig:
    check_fields(hf, LLAVA_FIELDS, "LlavaConfig")
    check_legacy_vocab_size(hf)
    if hf.vision_config.model_type not in ("clip_vision_model", "pixtral"):
        raise UnsupportedConfigError(
            f"LlavaConfig: vision_config.model_type={hf.vision_config.model_type!r} is a tower this converter does not "
            "build yet; supported: clip_vision_model, pixtral"
        )
    text = decoder_config(hf.text_config)
    extra = {"image_pipeline": "vit_mlp"}
    if hf.vision_config.model_type == "pixtral":  # mistral-community/pixtral-12b: images of any size
        if hf.vision_feature_select_strategy != "full":
            raise UnsupportedConfigError(f"LlavaConfig: vision_feature_select_strategy={hf.vision_feature_select_strategy!r}"
                                         " with a pixtral tower; supported: 'full' (pixtral has no class token: "
                                         "'default' would drop a real patch)")
        vision = pixtral_vision_config(hf.vision_config, feature_layers(hf))
        extra = {"image_pipeline": "pixtral", "input_keys": ("image_sizes",)}
    else:
        vision = clip_vision_config(hf.vision_config, feature_layers(hf), hf.vision_feature_select_strategy)
    tc = hf.text_config
    return HookedVLMConfig(
        architecture="LlavaForConditionalGeneration",
        text=text,
        d_vocab=tc.vocab_size,
        vision=vision,
        projector=ProjectorConfig(d_in=vision.tower.d_model * len(vision.feature_layers), d_out=text.d_model,
                                  act_fn=hf.projector_hidden_act, bias=hf.multimodal_projector_bias),
        roles=TokenRoles(image_token_id=hf.image_token_id, pad_token_id=tc.pad_token_id,
                         bos_token_id=tc.bos_token_id, eos_token_id=tc.eos_token_id),
        tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False) or getattr(tc, "tie_word_embeddings", False)),
        extra=extra,
    )


def llava_keymap(cfg: HookedVLMConfig) -> KeyMap:
    pixtral = cfg.vision.kind == "pixtral"
    return KeyMap(
        aliases=LLAVA_ALIASES + ([] if pixtral else clip_aliases("model.vision_tower")),
        rules=decoder_rules("model.language_model")
        + (pixtral_rules("model.vision_tower") if pixtral else clip_rules("model.vision_tower")) + [
            (r"model\.multi_modal_projector\.(linear_1|linear_2)\.(weight|bias)", r"projector.\1.\2"),
        ],
        ignored=[] if pixtral else clip_ignored("model.vision_tower"),
    )


CONVERTER = Converter(architectures=("LlavaForConditionalGeneration",), make_config=llava_config, make_keymap=llava_keymap,
                      finalize=pixtral_marker_roles)
