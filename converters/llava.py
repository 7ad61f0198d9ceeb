"""LlavaForConditionalGeneration (LLaVA-1.5: CLIP tower + MLP projector + Llama/Vicuna/Mistral/Qwen2 LM; also
mistral-community/pixtral-12b: a Pixtral tower, images of any size)."""

from __future__ import annotations

from .llava_like import LlavaLike

CONVERTER = LlavaLike(
    architecture="LlavaForConditionalGeneration",
    fields=frozenset({"image_token_index", "image_token_id", "projector_hidden_act", "vision_feature_layer",
                      "vision_feature_select_strategy", "image_seq_length", "multimodal_projector_bias",
                      "tie_word_embeddings", "ignore_index",
                      "vocab_size"}),  # legacy copy of text_config.vocab_size (checked equal)
    towers=("clip_vision_model", "pixtral"),
    projector="mlp",
).converter()
