"""LlavaNextVideoForConditionalGeneration, images only: the image path is LLaVA-NeXT's (anyres tiles +
image_newline, CLIP tower, Llama / Mistral / Qwen2 LM). Video inputs (``pixel_values_videos``) are refused by the
forward with the reason; the video pooler's tensors (``spatial_pool_mode="conv"``) are not loaded."""

from __future__ import annotations

from ._anyres import ANYRES_ALIASES, ANYRES_FIELDS, anyres_check, anyres_extra
from .llava_like import LlavaLike

VIDEO_REFUSAL = ("video inputs are not converted for LLaVA-NeXT-Video (its pooled video path); pass images only "
                 "(pixel_values + image_sizes)")

CONVERTER = LlavaLike(
    architecture="LlavaNextVideoForConditionalGeneration",
    # the video path's (refused at run time); spatial_pool_out_channels: read by getattr in the conv pooler only
    fields=ANYRES_FIELDS | {"video_token_index", "video_token_id", "spatial_pool_mode", "spatial_pool_stride",
                            "spatial_pool_out_channels", "video_seq_length"},
    towers=("clip_vision_model", "siglip_vision_model"),
    projector="anyres_mlp",
    aliases=ANYRES_ALIASES + ((r"^vision_resampler\.", "model.vision_resampler."),),
    check=anyres_check,
    extra=lambda hf: {**anyres_extra(hf), "refused_inputs": {"pixel_values_videos": VIDEO_REFUSAL}},
    role_extra=lambda hf: {"video": (hf.video_token_id,)},
    ignored_tensors=((r"model\.vision_resampler\..*", "the video pooler (spatial_pool_mode='conv'): video path only"),),
).converter()
