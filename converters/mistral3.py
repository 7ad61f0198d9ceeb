"""Mistral3ForConditionalGeneration (Pixtral tower -> RMSNorm + s x s patch merger + MLP -> Mistral LM)."""

from __future__ import annotations

from typing import Any

from hooked_vlm.config import HookedVLMConfig, ProjectorConfig, TokenRoles

from ._decoder import decoder_config, decoder_rules
from ._pixtral import pixtral_marker_roles, pixtral_rules, pixtral_vision_config
from .base import Converter, KeyMap, UnsupportedConfigError, check_fields
from .llava import LLAVA_ALIASES

MISTRAL3_FIELDS = {"image_token_index", "image_token_id", "projector_hidden_act", "vision_feature_layer",
                   "multimodal_projector_bias", "spatial_merge_size", "tie_word_embeddings", "ignore_index"}


def mistral3_config(hf: Any) -> HookedVLMConfig:
    check_fields(hf, MISTRAL3_FIELDS, "Mistral3Config")
    if hf.vision_config.model_type != "pixtral":
        raise UnsupportedConfigError(f"Mistral3Config: vision_config.model_type={hf.vision_config.model_type!r} is a tower "
                                     "this converter does not build; supported: pixtral")
    if not isinstance(hf.vision_feature_layer, int):
        raise UnsupportedConfigError(f"Mistral3Config: vision_feature_layer={hf.vision_feature_layer!r}: HF's projector "
                                     "norm and patch merger are one vision layer wide, so HF's own forward fails on "
                                     "concatenated layers; supported: one int, not a list")
    vision = pixtral_vision_config(hf.vision_config, (hf.vision_feature_layer,))
    text = decoder_config(hf.text_config)
    tc = hf.text_config
    return HookedVLMConfig(
        architecture="Mistral3ForConditionalGeneration",
        text=text,
        d_vocab=tc.vocab_size,
        vision=vision,
        projector=ProjectorConfig(d_in=vision.tower.d_model, d_out=text.d_model, act_fn=hf.projector_hidden_act,
                                  bias=hf.multimodal_projector_bias, kind="unfold_merge_mlp",
                                  extra={"spatial_merge_size": hf.spatial_merge_size, "norm_eps": tc.rms_norm_eps}),
        roles=TokenRoles(image_token_id=hf.image_token_id, pad_token_id=tc.pad_token_id,
                         bos_token_id=tc.bos_token_id, eos_token_id=tc.eos_token_id),
        tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False) or getattr(tc, "tie_word_embeddings", False)),
        extra={"image_pipeline": "pixtral", "input_keys": ("image_sizes",)},
    )


def mistral3_keymap(cfg: HookedVLMConfig) -> KeyMap:
    return KeyMap(
        aliases=LLAVA_ALIASES,
        rules=decoder_rules("model.language_model") + pixtral_rules("model.vision_tower") + [
            (r"model\.multi_modal_projector\.(linear_1|linear_2)\.(weight|bias)", r"projector.\1.\2"),
            (r"model\.multi_modal_projector\.norm\.weight", "projector.norm.w"),
            (r"model\.multi_modal_projector\.patch_merger\.merging_layer\.weight", "projector.merging_layer.weight"),
        ],
    )


CONVERTER = Converter(architectures=("Mistral3ForConditionalGeneration",), make_config=mistral3_config,
                      make_keymap=mistral3_keymap, finalize=pixtral_marker_roles)
