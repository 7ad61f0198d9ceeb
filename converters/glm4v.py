"""Glm4vForConditionalGeneration (GLM-4.1V) and Glm46VForConditionalGeneration (GLM-4.6V): images; videos refused.

Vision (``hooked_vlm/components/glm4v_vision.py``): the Qwen2-VL packed-patch ViT with RMS norms, a gated SiLU MLP of
width ``out_hidden_size`` (HF's ``Glm4VisionMlp``), qkv bias from ``attention_bias``, o_proj without bias, a norm
after the Conv3d patch embedding, a learned position table sampled bicubically at each patch centre, and a final norm.
Projector (``components/glm4v_merger.py``): a merge x merge strided Conv2d, then Linear -> LayerNorm -> GELU -> gated
MLP. LM: GLM-4 (``converters/_glm4.py``: sandwich norms, fused gate_up, partial interleaved rotary with 3-D M-RoPE).
Positions: the Qwen2-VL M-RoPE index (``position_fn="mrope"``: an image of h x w merged cells takes ``(start, start +
row, start + col)``, the text after it resumes at ``start + max(h, w)``, as HF's ``Glm4vModel.get_rope_index``).
GLM-4.6V (``Glm46vConfig``) is the same model with the GLM-4.5V LM (MoE) by ``text_config.model_type``.
"""

from __future__ import annotations

import re
from typing import Any

from hooked_vlm.config import HookedVLMConfig, ProjectorConfig, TokenRoles, TowerConfig, VisionConfig

from ._qwen_inputs import QwenVLInputs, with_image_processor
from .parts import LM_PARTS, lm_part
from .qwen3_5 import expert_parts
from .qwen3_vl import check_merger_width
from .base import Converter, KeyMap, UnsupportedConfigError, check_fields

TOP_FIELDS = {"image_token_id", "video_token_id", "image_start_token_id", "image_end_token_id",
              "video_start_token_id", "video_end_token_id", "tie_word_embeddings"}
VISION_FIELDS = {"depth", "hidden_size", "hidden_act", "attention_bias", "num_heads", "in_channels", "image_size",
                 "patch_size", "rms_norm_eps", "spatial_merge_size", "temporal_patch_size", "out_hidden_size",
                 "intermediate_size", "rope_parameters"}
VIDEO_REFUSAL = ("video inputs are not supported for GLM-4.xV (images only): pass images as pixel_values + "
                 "image_grid_thw, or extract frames and pass them as images")
GLM_LMS = ("glm4v_text", "glm4v_moe_text")  # LM_PARTS keys (converters/parts.py) these families accept


def vision_config(vc: Any) -> tuple[VisionConfig, ProjectorConfig]:
    where = f"vision_config ({vc.model_type})"
    check_fields(vc, VISION_FIELDS, where)
    rope = dict(vc.rope_parameters or {"rope_type": "axial", "rope_theta": 10000.0})
    if rope.get("rope_type", "axial") != "axial":
        raise UnsupportedConfigError(f"{where}: rope_parameters.rope_type={rope.get('rope_type')!r}; supported: "
                                     "'axial' (the 2-D rotary over patch rows and columns)")
    if not isinstance(vc.image_size, int) or not isinstance(vc.patch_size, int) or vc.image_size % vc.patch_size:
        raise UnsupportedConfigError(f"{where}: image_size={vc.image_size} and patch_size={vc.patch_size} must be "
                                     "integers with image_size a multiple of patch_size (the square position table)")
    tower = TowerConfig(n_layers=vc.depth, d_model=vc.hidden_size, n_heads=vc.num_heads, d_mlp=vc.out_hidden_size,
                        act_fn=vc.hidden_act, gated_mlp=True, normalization_type="RMS", norm_eps=vc.rms_norm_eps,
                        attn_bias=bool(vc.attention_bias), attn_out_bias=False, mlp_bias=False, causal=False,
                        positional="rope")
    extra = {"temporal_patch_size": vc.temporal_patch_size, "spatial_merge_size": vc.spatial_merge_size,
             "rope_theta": float(rope.get("rope_theta", 10000.0)),
             "num_position_embeddings": (vc.image_size // vc.patch_size) ** 2}
    vision = VisionConfig(tower=tower, image_size=0, patch_size=vc.patch_size, kind="glm4v_vit",
                          n_channels=vc.in_channels, class_token=False, patch_bias=True, ln_pre=False,
                          feature_layers=(-1,), extra=extra)
    projector = ProjectorConfig(d_in=vc.hidden_size, d_out=vc.out_hidden_size, act_fn="gelu", bias=False,
                                kind="glm4v_merger",
                                extra={"spatial_merge_size": vc.spatial_merge_size, "d_context": vc.intermediate_size,
                                       "mlp_act": vc.hidden_act, "norm_eps": 1e-5})
    return vision, projector


def glm4v_config(hf: Any) -> HookedVLMConfig:
    check_fields(hf, TOP_FIELDS, type(hf).__name__)
    tc = hf.text_config
    text = lm_part(tc, GLM_LMS, type(hf).__name__).config(tc)
    vision, projector = vision_config(hf.vision_config)
    check_merger_width(projector, text)
    return HookedVLMConfig(
        architecture=hf.architectures[0] if getattr(hf, "architectures", None) else "Glm4vForConditionalGeneration",
        text=text, d_vocab=tc.vocab_size, vision=vision, projector=projector,
        roles=TokenRoles(image_token_id=hf.image_token_id, boi_token_id=hf.image_start_token_id,
                         eoi_token_id=hf.image_end_token_id, pad_token_id=getattr(tc, "pad_token_id", None),
                         bos_token_id=getattr(tc, "bos_token_id", None), eos_token_id=getattr(tc, "eos_token_id", None)),
        tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
        extra={"image_pipeline": "qwen_vl", "lm_model_type": tc.model_type, "input_keys": ("image_grid_thw", "mm_token_type_ids"),
               "refused_inputs": {"pixel_values_videos": VIDEO_REFUSAL, "video_grid_thw": VIDEO_REFUSAL},
               "position_fn": "mrope",
               "mrope": {"image_token_id": hf.image_token_id, "video_token_id": hf.video_token_id,
                         "spatial_merge_size": hf.vision_config.spatial_merge_size}},
    )


def vision_rules(prefix: str) -> list[tuple[str, str]]:
    p = re.escape(prefix)
    b = rf"{p}\.blocks\.(\d+)"
    m = rf"{p}\.merger"
    return [
        (rf"{p}\.patch_embed\.proj\.(weight|bias)", r"vision.patch_embed.\1"),
        (rf"{p}\.embeddings\.position_embedding\.weight", "vision.pos_embed.weight"),
        (rf"{p}\.post_conv_layernorm\.weight", "vision.ln_conv.w"),
        (rf"{p}\.post_layernorm\.weight", "vision.ln_post.w"),
        (rf"{b}\.norm(1|2)\.weight", r"vision.blocks.\1.ln\2.w"),
        (rf"{b}\.attn\.qkv\.(weight|bias)", r"vision.blocks.\1.attn.qkv.\2"),
        (rf"{b}\.attn\.proj\.weight", r"vision.blocks.\1.attn.o_proj.weight"),
        (rf"{b}\.mlp\.(gate|up|down)_proj\.weight", r"vision.blocks.\1.mlp.\2_proj.weight"),
        (rf"{p}\.downsample\.(weight|bias)", r"projector.downsample.\1"),
        (rf"{m}\.proj\.weight", "projector.proj.weight"),
        (rf"{m}\.post_projection_norm\.weight", "projector.ln.w"),
        (rf"{m}\.post_projection_norm\.bias", "projector.ln.b"),
        (rf"{m}\.(gate|up|down)_proj\.weight", r"projector.mlp.\1_proj.weight"),
    ]


# transformers 4.x save_pretrained writes model.layers.* / visual.*
ALIASES = [
    (r"^model\.(layers|embed_tokens|norm)\.", r"model.language_model.\1."),
    (r"^visual\.", "model.visual."),
]


def glm4v_keymap(cfg: HookedVLMConfig) -> KeyMap:
    # per-expert tensors (what save_pretrained writes and the hub holds) fill the fused expert parameters
    parts = expert_parts("model.language_model", cfg.text.d_mlp_expert) if cfg.text.mlp_kind == "moe" else []
    return KeyMap(aliases=ALIASES, rules=glm_lm_rules(cfg)("model.language_model") + vision_rules("model.visual"),
                  parts=parts)


def glm_lm_rules(cfg: HookedVLMConfig) -> Any:
    return LM_PARTS[cfg.extra["lm_model_type"]].rules


def load_glm4v_inputs(folder: str) -> Any:
    """Tokenizer + GLM-4V's PIL image processor (the torchvision-free variant), laid out as HF's Glm4vProcessor
    lays out images (``<|image|>`` expanded to ``t * h * w / merge**2`` copies); the tokenizer alone (or None) when
    files are missing."""
    def make(tokenizer: Any) -> QwenVLInputs:
        from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

        return QwenVLInputs(tokenizer, Glm4vImageProcessorPil.from_pretrained(folder), image_token="<|image|>")

    return with_image_processor(folder, make)


CONVERTER = Converter(
    architectures=("Glm4vForConditionalGeneration", "Glm4vMoeForConditionalGeneration", "Glm46VForConditionalGeneration"),
    make_config=glm4v_config,
    make_keymap=glm4v_keymap,
    load_processor=load_glm4v_inputs,
)
