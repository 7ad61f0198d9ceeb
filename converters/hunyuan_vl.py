"""HunYuanVLForConditionalGeneration (HunyuanOCR): images (HF's HunYuanVL takes no video).

Vision (``hooked_vlm/components/hunyuan_vision.py``, kind ``hunyuan_vit``): packed row-major patches, Conv2d patch
embedding with bias, a learned ``(max_image_size / patch_size)**2`` position grid resized bilinearly to each image,
LayerNorm blocks (eps ``rms_norm_eps``: HF's ``layer_norm_eps`` alias) with separate biased q/k/v/o and a GELU MLP, no
rotary, attention within each image. Projector (``components/conv_merger.py``, kind ``conv_merger``): RMSNorm, 2 x 2
strided conv, activation, 1 x 1 conv, a learned row break after each row, Linear, learned begin / end embeddings,
RMSNorm. LM: HunYuan dense (``converters/_hunyuan.py``, LM part ``hunyuan_vl_text``). Positions: ``xdrope``
(``hooked_vlm/positions_grid.py``). Prompt layout (HF's HunYuanVLProcessor): ``<im_start>`` + the image token x
``1 + (h / 2) * (w / 2 + 1) + 1`` + ``<im_end>``, with ``mm_token_type_ids``.
"""

from __future__ import annotations

import re
from typing import Any

from hooked_vlm.config import HookedVLMConfig, ProjectorConfig, TokenRoles, TowerConfig, VisionConfig

from ._hunyuan_inputs import load_hunyuan_inputs
from .base import Converter, KeyMap, UnsupportedConfigError, check_copy, check_fields
from .parts import LM_PARTS, lm_part

TOP_FIELDS = {"image_token_id", "tie_word_embeddings", "im_start_id", "im_end_id"}  # im_start/end: the boi / eoi spans
TOP_IGNORED = {"im_newline_id": "a tokenizer id; HF's model never reads it (the merger adds learned row breaks)",
               "image_newline_token_id": "a tokenizer id in hub configs; HF's model never reads it"}
#: hub configs name the marker ids so; HunYuanVLConfig reads im_start_id / im_end_id: accepted when equal
MARKER_COPIES = {"image_start_token_id": "im_start_id", "image_end_token_id": "im_end_id"}
VISION_FIELDS = {"hidden_act", "hidden_size", "intermediate_size", "interpolate_mode", "rms_norm_eps",
                 "num_attention_heads", "num_channels", "num_hidden_layers", "patch_size", "spatial_merge_size",
                 "temporal_patch_size", "max_image_size", "text_hidden_size", "num_key_value_heads"}
VISION_IGNORED = {
    "out_hidden_size": "HF's merger projects to text_hidden_size (the LM width); out_hidden_size is never read",
    "img_max_token_num": "a processor-side limit; the model never reads it",
    "min_image_size": "a processor-side limit; the model never reads it",
    "max_vit_seq_len": "a sequence-length limit of the original serving code; HF's model never reads it",
}
HUNYUAN_LMS = ("hunyuan_vl_text",)  # LM_PARTS keys this family accepts


def vision_config(vc: Any, text_width: int) -> tuple[VisionConfig, ProjectorConfig]:
    where = f"vision_config ({vc.model_type})"
    check_fields(vc, VISION_FIELDS, where, VISION_IGNORED)
    if vc.num_key_value_heads not in (None, vc.num_attention_heads):
        raise UnsupportedConfigError(f"{where}: num_key_value_heads={vc.num_key_value_heads} differs from "
                                     f"num_attention_heads={vc.num_attention_heads}; HF's HunYuanVL vision attention "
                                     "has no grouped heads (a checkpoint for it would not load)")
    if vc.temporal_patch_size != 1:
        raise UnsupportedConfigError(f"{where}: temporal_patch_size={vc.temporal_patch_size}; HF's HunYuanVL patch "
                                     "embedding reads single-frame patches (channels * patch * patch): supported: 1")
    if vc.max_image_size % vc.patch_size or vc.text_hidden_size != text_width:
        raise UnsupportedConfigError(f"{where}: max_image_size={vc.max_image_size} must be a multiple of patch_size="
                                     f"{vc.patch_size} and text_hidden_size={vc.text_hidden_size} equal the LM width "
                                     f"{text_width}")
    tower = TowerConfig(n_layers=vc.num_hidden_layers, d_model=vc.hidden_size, n_heads=vc.num_attention_heads,
                        d_mlp=vc.intermediate_size, act_fn=vc.hidden_act, gated_mlp=False, normalization_type="LN",
                        norm_eps=vc.rms_norm_eps, attn_bias=True, attn_out_bias=True, mlp_bias=True, causal=False,
                        positional="none")
    extra = {"temporal_patch_size": 1, "spatial_merge_size": vc.spatial_merge_size,
             "position_edge": vc.max_image_size // vc.patch_size, "interpolate_mode": vc.interpolate_mode}
    vision = VisionConfig(tower=tower, image_size=0, patch_size=vc.patch_size, kind="hunyuan_vit",
                          n_channels=vc.num_channels, class_token=False, patch_bias=True, ln_pre=False,
                          feature_layers=(-1,), extra=extra)
    projector = ProjectorConfig(d_in=vc.hidden_size, d_out=vc.text_hidden_size, act_fn=vc.hidden_act, bias=True,
                                kind="conv_merger", extra={"spatial_merge_size": vc.spatial_merge_size,
                                                           "norm_eps": vc.rms_norm_eps, "act": vc.hidden_act})
    return vision, projector


def hunyuan_vl_config(hf: Any) -> HookedVLMConfig:
    where = type(hf).__name__
    check_fields(hf, TOP_FIELDS | set(MARKER_COPIES), where, TOP_IGNORED)
    for copy, field in MARKER_COPIES.items():
        check_copy(hf, copy, getattr(hf, field), field, where)
    tc = hf.text_config
    text = lm_part(tc, HUNYUAN_LMS, where).config(tc)
    vision, projector = vision_config(hf.vision_config, text.d_model)
    return HookedVLMConfig(
        architecture=hf.architectures[0] if getattr(hf, "architectures", None) else "HunYuanVLForConditionalGeneration",
        text=text, d_vocab=tc.vocab_size, vision=vision, projector=projector,
        roles=TokenRoles(image_token_id=hf.image_token_id, boi_token_id=hf.im_start_id, eoi_token_id=hf.im_end_id,
                         pad_token_id=getattr(tc, "pad_token_id", None), bos_token_id=getattr(tc, "bos_token_id", None),
                         eos_token_id=getattr(tc, "eos_token_id", None)),
        tie_word_embeddings=bool(hf.tie_word_embeddings or getattr(tc, "tie_word_embeddings", False)),
        extra={"image_pipeline": "grid_rows", "lm_model_type": tc.model_type,
               "input_keys": ("image_grid_thw", "mm_token_type_ids"), "position_fn": "xdrope",
               "xdrope": {"image_token_id": hf.image_token_id, "spatial_merge_size": hf.vision_config.spatial_merge_size,
                          "n_axes": len(text.rope_parameters["mrope_section"])}},
    )


# save_pretrained writes HF's original names (transformers' conversion_mapping "hunyuan_vl"); the in-memory layout is
# model.language_model.* / model.vision_tower.* (layer_norm1/2, mlp.fc1/fc2, patch_merger.proj_conv/proj_out)
ALIASES = [
    (r"^model\.(layers|embed_tokens|norm)\.", r"model.language_model.\1."),
    (r"^(?:model\.)?vit\.", "model.vision_tower."),
    (r"^(model\.vision_tower\.layers\.\d+)\.input_layernorm\.", r"\1.layer_norm1."),
    (r"^(model\.vision_tower\.layers\.\d+)\.post_attention_layernorm\.", r"\1.layer_norm2."),
    (r"\.mlp\.dense_h_to_4h\.", ".mlp.fc1."),
    (r"\.mlp\.dense_4h_to_h\.", ".mlp.fc2."),
    (r"\.perceive\.proj\.0\.", ".patch_merger.proj_conv."),
    (r"\.perceive\.proj\.2\.", ".patch_merger.proj_out."),
    (r"\.perceive\.", ".patch_merger."),
]


def vision_rules(prefix: str) -> list[tuple[str, str]]:
    p = re.escape(prefix)
    b = rf"{p}\.layers\.(\d+)"
    m = rf"{p}\.patch_merger"
    return [
        (rf"{p}\.embeddings\.patch_embedding\.(weight|bias)", r"vision.patch_embed.\1"),
        (rf"{p}\.embeddings\.position_embedding\.weight", "vision.pos_embed.weight"),
        (rf"{b}\.layer_norm(1|2)\.weight", r"vision.blocks.\1.ln\2.w"),
        (rf"{b}\.layer_norm(1|2)\.bias", r"vision.blocks.\1.ln\2.b"),
        (rf"{b}\.self_attn\.(q|k|v|o)_proj\.(weight|bias)", r"vision.blocks.\1.attn.\2_proj.\3"),
        (rf"{b}\.mlp\.fc1\.(weight|bias)", r"vision.blocks.\1.mlp.up_proj.\2"),
        (rf"{b}\.mlp\.fc2\.(weight|bias)", r"vision.blocks.\1.mlp.down_proj.\2"),
        (rf"{m}\.before_rms\.weight", "projector.ln_in.w"),
        (rf"{m}\.after_rms\.weight", "projector.ln_out.w"),
        (rf"{m}\.(proj_conv|proj_out|mlp)\.(weight|bias)", r"projector.\1.\2"),
        (rf"{m}\.(image_newline|image_begin|image_end)", r"projector.\1"),
    ]


def hunyuan_vl_keymap(cfg: HookedVLMConfig) -> KeyMap:
    return KeyMap(aliases=ALIASES,
                  rules=LM_PARTS[cfg.extra["lm_model_type"]].rules("model.language_model")
                  + vision_rules("model.vision_tower"),
                  ignored=[(r"model\.vision_tower\.patch_merger\.image_sep",
                            "HF's merger defines image_sep but its forward never uses it")])


CONVERTER = Converter(
    architectures=("HunYuanVLForConditionalGeneration",),
    make_config=hunyuan_vl_config,
    make_keymap=hunyuan_vl_keymap,
    load_processor=load_hunyuan_inputs,
)
