"""VipLlavaForConditionalGeneration (ViP-LLaVA: CLIP tower, several layers concatenated, class token dropped ->
LayerNorm + MLP projector -> Llama / Vicuna LM)."""

from __future__ import annotations

from typing import Any

from .llava_like import LlavaLike


def _feature_layers(hf: Any) -> tuple[int, ...]:
    """transformers 5.20 calls the field vision_feature_layers (what hub configs hold); 5.23 renames it
    vision_feature_layer and keeps vision_feature_layers as an alias (attribute_map): the plural reads HF's value in both."""
    layer = hf.vision_feature_layers
    return (layer,) if isinstance(layer, int) else tuple(layer)


CONVERTER = LlavaLike(
    architecture="VipLlavaForConditionalGeneration",
    fields=frozenset({"image_token_index", "image_token_id", "projector_hidden_act", "projector_layernorm_eps",
                      "vision_feature_layer", "vision_feature_layers", "image_seq_length", "tie_word_embeddings",
                      "ignore_index", "vocab_size"}),  # vocab_size: a legacy copy of text_config's (checked equal)
    towers=("clip_vision_model",),
    projector="mlp",
    feature_layers=_feature_layers,
    feature_select=lambda hf: "default",  # HF always drops the class token ([:, 1:])
    projector_settings=lambda hf: {"act_fn": hf.projector_hidden_act, "bias": True,
                                   "pre_norm_eps": hf.projector_layernorm_eps},
).converter()
