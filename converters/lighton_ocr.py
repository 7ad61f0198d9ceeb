"""LightOnOcrForConditionalGeneration (LightOnOCR: Pixtral tower, last hidden state -> RMSNorm + 2 x 2 patch merger
+ bias-free GELU MLP -> Qwen3 LM). HF's module names differ from Mistral3's (vision_encoder, vision_projection);
the math is Mistral3's. The prompt holds ``[IMG]`` x (rows * cols) of the merged grid, no row breaks."""

from __future__ import annotations

from .llava_like import LlavaLike

CONVERTER = LlavaLike(
    architecture="LightOnOcrForConditionalGeneration",
    fields=frozenset({"image_token_id", "spatial_merge_size", "tie_word_embeddings"}),
    towers=("pixtral",),
    projector="unfold_merge_mlp",
    tower_prefix="model.vision_encoder",
    projector_prefix="model.vision_projection",
    aliases=(),
    feature_layers=lambda hf: (-1,),  # last_hidden_state
    feature_select=lambda hf: "full",
    # nn.GELU() (exact erf) and bias=False are hard-coded in HF's LightOnOcrMultiModalProjector
    projector_settings=lambda hf: {"act_fn": "gelu", "bias": False, "spatial_merge_size": hf.spatial_merge_size,
                                   "norm_eps": hf.text_config.rms_norm_eps},
    legacy_vocab_size=False,
).converter()
