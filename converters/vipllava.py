"""VipLlavaForConditionalGeneration (ViP-LLaVA: CLIP tower, several layers concatenated, class token dropped ->
LayerNorm + MLP projector -> Llama / Vicuna LM)."""

from __future__ import annotations

from .llava_like import LlavaLike, feature_layers

CONVERTER = LlavaLike(
    architecture="VipLlavaForConditionalGeneration",
    fields=frozenset({"image_token_index", "image_token_id", "projector_hidden_act", "projector_layernorm_eps",
                      "vision_feature_layer", "image_seq_length", "tie_word_embeddings", "ignore_index",
                      "vocab_size"}),  # legacy copy of text_config.vocab_size (checked equal)
    towers=("clip_vision_model",),
    projector="mlp",
    feature_layers=feature_layers,
    feature_select=lambda hf: "default",  # HF always drops the class token ([:, 1:])
    projector_settings=lambda hf: {"act_fn": hf.projector_hidden_act, "bias": True,
                                   "pre_norm_eps": hf.projector_layernorm_eps},
).converter()
