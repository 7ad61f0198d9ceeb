"""Mistral3ForConditionalGeneration (Pixtral tower -> RMSNorm + s x s patch merger + MLP -> Mistral LM)."""

from __future__ import annotations

from typing import Any

from .base import UnsupportedConfigError
from .llava_like import LlavaLike, mlp_settings


def _check(hf: Any) -> None:
    if not isinstance(hf.vision_feature_layer, int):
        raise UnsupportedConfigError(f"Mistral3Config: vision_feature_layer={hf.vision_feature_layer!r}: HF's projector "
                                     "norm and patch merger are one vision layer wide, so HF's own forward fails on "
                                     "concatenated layers; supported: one int, not a list")


CONVERTER = LlavaLike(
    architecture="Mistral3ForConditionalGeneration",
    fields=frozenset({"image_token_index", "image_token_id", "projector_hidden_act", "vision_feature_layer",
                      "multimodal_projector_bias", "spatial_merge_size", "tie_word_embeddings", "ignore_index"}),
    towers=("pixtral",),
    projector="unfold_merge_mlp",
    check=_check,
    feature_select=lambda hf: "full",
    projector_settings=lambda hf: {**mlp_settings(hf), "spatial_merge_size": hf.spatial_merge_size,
                                   "norm_eps": hf.text_config.rms_norm_eps},
    legacy_vocab_size=False,
).converter()
