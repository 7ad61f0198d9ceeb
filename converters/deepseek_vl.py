"""DeepseekVLForConditionalGeneration (DeepSeek-VL 1.3B / 7B, base: SigLIP tower read at its last_hidden_state (after
post_layernorm) -> aligner (linear1 -> GELU -> linear2) -> Llama LM; 576 image tokens per 384 px image, no markers).
DeepSeek-VL-Hybrid (a SAM high-resolution encoder beside SigLIP) is converters/deepseek_vl_hybrid.py."""

from __future__ import annotations

from .llava_like import LlavaLike

CONVERTER = LlavaLike(
    architecture="DeepseekVLForConditionalGeneration",
    fields=frozenset({"image_token_id", "tie_word_embeddings"}),
    towers=("siglip_vision_model",),
    projector="mlp",
    tower_prefix="model.vision_model",
    projector_prefix="model.aligner",
    aliases=(),
    last_hidden_state=True,
    feature_layers=lambda hf: (-1,),
    feature_select=lambda hf: "full",
    projector_settings=lambda hf: {"act_fn": "gelu", "bias": True},  # nn.GELU() and biases hard-coded in HF's aligner
    legacy_vocab_size=False,
).converter()
