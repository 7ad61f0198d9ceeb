"""GotOcr2ForConditionalGeneration (stepfun-ai/GOT-OCR-2.0-hf): SAM's ViT (``got_ocr2_vision``: 1024 px, windowed /
global attention with decomposed relative positions, conv neck) -> two stride-2 convs + Linear -> Qwen2 LM; 256 image
tokens (``<imgpad>``) per 1024 px page or tile, between ``<img>`` / ``</img>`` (``boi`` / ``eoi``, from the
processor's tokenizer)."""

from __future__ import annotations

from .llava_like import LlavaLike

CONVERTER = LlavaLike(
    architecture="GotOcr2ForConditionalGeneration",
    fields=frozenset({"image_token_index", "tie_word_embeddings"}),
    ignored={"image_seq_length": "the processor's count of image tokens per tile; GotOcr2Model never reads it (the "
                                 "token count follows from the tower's grid)"},
    towers=("got_ocr2_vision",),
    projector="conv_downsample",
    feature_layers=lambda hf: (),  # the neck output only
    feature_select=lambda hf: "full",
    projector_settings=lambda hf: {"bias": True,  # nn.Linear's default in HF's multimodal_projector
                                   "grid": hf.vision_config.image_size // hf.vision_config.patch_size},
).converter()
