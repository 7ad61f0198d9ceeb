"""The parts a family is made of, each found by the HF ``model_type`` (or projector kind) it converts.

``LM_PARTS[text_config.model_type]``: the HF text config -> our :class:`TowerConfig` and the checkpoint key rules of
the decoder under a prefix. ``TOWER_PARTS[vision_config.model_type]``: the HF vision config -> our
:class:`VisionConfig`, its key rules / aliases / ignored tensors, the image pipeline it needs and what only the
processor knows (``finalize``). ``PROJECTOR_PARTS[kind]``: our :class:`ProjectorConfig` and the key rules of HF's
projector module. A family declares which of each it takes (``converters/llava_like.py`` for the LLaVA-like ones);
a new LM or tower is one entry here and every family that accepts it gets it.

Each part refuses what it does not handle (``check_fields`` in its config function); :func:`lm_part` /
:func:`tower_part` refuse a ``model_type`` with no part, naming the supported ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from hooked_vlm.config import ProjectorConfig, TowerConfig, VisionConfig

from ._aimv2 import AIMV2_VISION_FIELDS, aimv2_ignored, aimv2_rules, aimv2_vision_config, table_config, table_rules
from ._cohere2 import COHERE2_FIELDS, COHERE_FIELDS, cohere2_rules, cohere2_text_config, cohere_text_config
from ._clip import CLIP_VISION_FIELDS, clip_aliases, clip_ignored, clip_rules, clip_vision_config
from ._glm4 import (GLM4_MOE_TEXT_FIELDS, GLM4_TEXT_FIELDS, glm4_moe_rules, glm4_moe_text_config, glm4_rules,
                    glm4_text_config)
from ._exaone4 import EXAONE4_FIELDS, exaone4_rules, exaone4_text_config
from ._hunyuan import HUNYUAN_TEXT_FIELDS, hunyuan_rules, hunyuan_text_config
from ._decoder import DECODER_FIELDS, decoder_config, decoder_rules, qk_norm_rules
from ._lfm2 import LFM2_FIELDS, lfm2_config, lfm2_rules
from ._sam import SAM_VISION_FIELDS, sam_marker_roles, sam_rules, sam_vision_config
from ._llama4_text import TEXT_FIELDS as LLAMA4_TEXT_FIELDS, TEXT_TRANSFORMS as LLAMA4_TEXT_TRANSFORMS
from ._llama4_text import llama4_text_config, llama4_text_rules
from ._llama4_vision import (LLAMA4_VISION_FIELDS, llama4_adapter_config, llama4_adapter_rules, llama4_marker_roles,
                             llama4_vision_config, llama4_vision_ignored, llama4_vision_rules)
from ._molmo2_parts import (TEXT_FIELDS as MOLMO2_TEXT_FIELDS, VISION_FIELDS as MOLMO2_VISION_FIELDS,
                            attention_pool_config, attention_pool_rules, molmo2_text_config, molmo2_text_rules,
                            molmo2_vision_config, molmo2_vision_rules)
from ._pixtral import PIXTRAL_VISION_FIELDS, pixtral_marker_roles, pixtral_rules, pixtral_vision_config
from ._siglip import SIGLIP_VISION_FIELDS, siglip_ignored, siglip_last_hidden_config, siglip_rules, siglip_vision_config
from ._vit import post_layernorm_rules
from .base import UnsupportedConfigError

Rules = Callable[[str], list[tuple[str, str]]]


def _none(prefix: str) -> list[tuple[str, str]]:
    return []


@dataclass(frozen=True)
class LMPart:
    """A decoder LM: ``config(text_config, **options) -> TowerConfig``; ``rules(prefix)``; the fields it handles;
    ``transforms``: (regex over our names, fn) layout changes of its tensors (Llama 4's fused experts)."""

    config: Callable[..., TowerConfig]
    rules: Rules
    fields: frozenset[str]
    transforms: tuple[tuple[str, Callable[[Any], Any]], ...] = ()


@dataclass(frozen=True)
class TowerPart:
    """A vision tower: ``config(vision_config, feature_layers, feature_select) -> VisionConfig``; key rules, aliases
    (legacy layouts) and ignored tensors (with reasons) under a prefix; the cfg.extra entries of its image pipeline
    (``image_pipeline``, ``input_keys``); ``finalize(cfg, processor)`` for roles only the processor knows."""

    config: Callable[[Any, tuple[int, ...], str], VisionConfig]
    rules: Rules
    fields: frozenset[str]
    aliases: Rules = _none
    ignored: Rules = _none
    pipeline: dict[str, Any] = field(default_factory=lambda: {"image_pipeline": "vit_mlp"})
    finalize: Callable[[Any, Any], None] | None = None
    # the same tower read at its last_hidden_state (after its final norm), for families that read that
    last_hidden_state: "TowerPart | None" = None


@dataclass(frozen=True)
class ProjectorPart:
    """A projector kind: ``config(d_in, d_out, settings) -> ProjectorConfig`` (settings: act_fn, bias and the
    kind's own entries, from the family); ``rules(prefix)``: HF's projector module under ``prefix``."""

    config: Callable[[int, int, dict[str, Any]], ProjectorConfig]
    rules: Rules


# ---------------------------------------------------------------- language models
def _decoder_part(kind: str, qk_norm: bool = False) -> LMPart:
    rules = (lambda p: decoder_rules(p) + qk_norm_rules(p)) if qk_norm else decoder_rules
    return LMPart(config=decoder_config, rules=rules, fields=frozenset(DECODER_FIELDS[kind]))


LM_PARTS: dict[str, LMPart] = {
    "llama": _decoder_part("llama"),
    "mistral": _decoder_part("mistral"),
    "qwen2": _decoder_part("qwen2"),
    "qwen3": _decoder_part("qwen3", qk_norm=True),
    "granite": _decoder_part("granite"),
    # Cohere2 (Aya Vision 8B, Cohere2 Vision: parallel block, NoPE global layers) and Cohere (Aya Vision 32B)
    "cohere2": LMPart(config=cohere2_text_config, rules=cohere2_rules, fields=frozenset(COHERE2_FIELDS)),
    "cohere": LMPart(config=cohere_text_config, rules=cohere2_rules, fields=frozenset(COHERE_FIELDS)),
    # LFM2 (LFM2-VL): short-convolution + attention layers
    "lfm2": LMPart(config=lfm2_config, rules=lfm2_rules, fields=frozenset(LFM2_FIELDS)),
    "glm4v_text": LMPart(config=glm4_text_config, rules=glm4_rules, fields=frozenset(GLM4_TEXT_FIELDS)),
    "glm4v_moe_text": LMPart(config=glm4_moe_text_config, rules=glm4_moe_rules, fields=frozenset(GLM4_MOE_TEXT_FIELDS)),
    # EXAONE 4 (EXAONE 4.5's LM): post-sublayer norms only, q/k norms, sliding RoPE layers + NoPE global layers
    "exaone4": LMPart(config=exaone4_text_config, rules=exaone4_rules, fields=frozenset(EXAONE4_FIELDS)),
    # HunYuan dense (HunYuanVL's LM): q/k RMS norms after RoPE, multimodal RoPE over 3-4 axes ("doubled" layout)
    "hunyuan_vl_text": LMPart(config=hunyuan_text_config, rules=hunyuan_rules, fields=frozenset(HUNYUAN_TEXT_FIELDS)),
    # Llama 4: chunked / NoPE layers, L2 q/k norm, temperature tuning, sigmoid-routed MoE with a shared expert
    "llama4_text": LMPart(config=llama4_text_config, rules=llama4_text_rules, fields=frozenset(LLAMA4_TEXT_FIELDS),
                          transforms=tuple(LLAMA4_TEXT_TRANSFORMS)),
    # Molmo 2's LM: Qwen3-style q/k norms (per head or over all heads), optional post-sublayer norms, fused qkv /
    # gate_up (the in-memory layout's split tensors and the two-table embedding are parts: converters/molmo2.py)
    "molmo2_text": LMPart(config=molmo2_text_config, rules=molmo2_text_rules, fields=frozenset(MOLMO2_TEXT_FIELDS)),
}


def lm_part(tc: Any, accepted: tuple[str, ...] | None = None, where: str = "") -> LMPart:
    """The part for ``tc.model_type`` (one of ``accepted`` when given), or a refusal naming the supported ones."""
    kinds = tuple(LM_PARTS) if accepted is None else accepted
    if tc.model_type not in kinds or tc.model_type not in LM_PARTS:
        raise UnsupportedConfigError(
            f"{where + ': ' if where else ''}text_config.model_type={tc.model_type!r}: a language model this converter "
            f"does not build; supported: {', '.join(sorted(k for k in kinds if k in LM_PARTS))}")
    return LM_PARTS[tc.model_type]


# ---------------------------------------------------------------- vision towers
def _pixtral_config(vc: Any, feature_layers: tuple[int, ...], feature_select: str) -> VisionConfig:
    if feature_select != "full":
        raise UnsupportedConfigError(f"vision_feature_select_strategy={feature_select!r} with a pixtral tower; "
                                     "supported: 'full' (pixtral has no class token: 'default' would drop a real patch)")
    return pixtral_vision_config(vc, feature_layers)


def _siglip_last_hidden(vc: Any, feature_layers: tuple[int, ...], feature_select: str) -> VisionConfig:
    if tuple(feature_layers) != (-1,) or feature_select != "full":
        raise UnsupportedConfigError(f"a SigLIP tower read at last_hidden_state gives every patch of its last layer; "
                                     f"feature layers {feature_layers} / selection {feature_select!r} do not apply")
    return siglip_last_hidden_config(vc)


TOWER_PARTS: dict[str, TowerPart] = {
    "clip_vision_model": TowerPart(config=clip_vision_config, rules=clip_rules, aliases=clip_aliases,
                                   ignored=clip_ignored, fields=frozenset(CLIP_VISION_FIELDS)),
    "siglip_vision_model": TowerPart(
        config=siglip_vision_config, rules=siglip_rules, ignored=siglip_ignored, fields=frozenset(SIGLIP_VISION_FIELDS),
        last_hidden_state=TowerPart(
            config=_siglip_last_hidden, rules=lambda p: siglip_rules(p) + post_layernorm_rules(p),
            ignored=lambda p: [(k, why) for k, why in siglip_ignored(p) if "post_layernorm" not in k],
            fields=frozenset(SIGLIP_VISION_FIELDS))),
    # images of any size packed into one block-diagonal sequence; [IMG_BREAK] / [IMG_END] from the tokenizer
    "pixtral": TowerPart(config=_pixtral_config, rules=pixtral_rules, fields=frozenset(PIXTRAL_VISION_FIELDS),
                         pipeline={"image_pipeline": "pixtral", "input_keys": ("image_sizes",)},
                         finalize=pixtral_marker_roles),
    # Llama 4: unfold patch embedding, class token last, learned positions + 2-D RoPE, pre / post LayerNorms; square
    # tiles + a global tile between <|image_start|> / <|image_end|> (the tiles_marked pipeline)
    "llama4_vision_model": TowerPart(config=llama4_vision_config, rules=llama4_vision_rules,
                                     ignored=llama4_vision_ignored, fields=frozenset(LLAMA4_VISION_FIELDS),
                                     pipeline={"image_pipeline": "tiles_marked"}, finalize=llama4_marker_roles),
    # Ovis 2's AIMv2-style ViT (RMS norms, SwiGLU, normed patch embeddings), read after its final norm; fixed-size
    # crops, a thumbnail then a grid (pipelines/thumbnail_grid.py)
    "ovis2_vision": TowerPart(config=aimv2_vision_config, rules=aimv2_rules, ignored=aimv2_ignored,
                              fields=frozenset(AIMV2_VISION_FIELDS), pipeline={"image_pipeline": "thumbnail_grid"}),
    # SAM's ViT (windowed / global rel-pos attention, conv neck): GOT-OCR2's tower (got_ocr2_vision, the same module)
    # and SAM's own vision config (DeepSeek-VL-Hybrid's high-res tower; converters/deepseek_vl_hybrid.py)
    **{kind: TowerPart(config=sam_vision_config, rules=sam_rules, fields=frozenset(SAM_VISION_FIELDS),
                       pipeline={"image_pipeline": "sam_conv"}, finalize=sam_marker_roles)
       for kind in ("got_ocr2_vision", "sam_vision_model")},
    # Molmo 2's ViT on pre-cut patches (pipeline pooled_windows: crops + the adapter's pooling windows)
    "molmo2_vision": TowerPart(config=molmo2_vision_config, rules=molmo2_vision_rules,
                               fields=frozenset(MOLMO2_VISION_FIELDS),
                               pipeline={"image_pipeline": "pooled_windows",
                                         "input_keys": ("image_token_pooling", "image_grids", "image_num_crops")}),
}


def tower_part(vc: Any, accepted: tuple[str, ...], where: str, last_hidden_state: bool = False) -> TowerPart:
    """The part for ``vc.model_type``; ``last_hidden_state``: its variant read after the tower's final norm."""
    if vc.model_type not in accepted or vc.model_type not in TOWER_PARTS:
        raise UnsupportedConfigError(
            f"{where}: vision_config.model_type={vc.model_type!r} is a tower this converter does not build; "
            f"supported: {', '.join(k for k in accepted if k in TOWER_PARTS)}")
    part = TOWER_PARTS[vc.model_type]
    if last_hidden_state:
        if part.last_hidden_state is None:
            raise UnsupportedConfigError(f"{where}: a {vc.model_type!r} tower read at its last_hidden_state is not "
                                         "implemented")
        return part.last_hidden_state
    return part


# ---------------------------------------------------------------- projectors
def _mlp(kind: str) -> Callable[[int, int, dict[str, Any]], ProjectorConfig]:
    def config(d_in: int, d_out: int, settings: dict[str, Any]) -> ProjectorConfig:
        extra = {k: v for k, v in settings.items() if k not in ("act_fn", "bias")}
        return ProjectorConfig(d_in=d_in, d_out=d_out, act_fn=settings["act_fn"], bias=settings["bias"], kind=kind,
                               extra=extra)
    return config


def _linears(prefix: str) -> list[tuple[str, str]]:
    """linear_1 / linear_2 (DeepSeek-VL's aligner: linear1 / linear2)."""
    return [(rf"{re.escape(prefix)}\.linear_?(1|2)\.(weight|bias)", r"projector.linear_\1.\2")]


PROJECTOR_PARTS: dict[str, ProjectorPart] = {
    # linear_1 -> act -> linear_2 (LLaVA); with settings["pre_norm_eps"] a LayerNorm ``ln`` first (VipLlava)
    "mlp": ProjectorPart(config=_mlp("mlp"), rules=lambda p: _linears(p) + [
        (rf"{re.escape(p)}\.projector_layernorm\.(weight)", r"projector.ln.w"),
        (rf"{re.escape(p)}\.projector_layernorm\.(bias)", r"projector.ln.b")]),
    # the MLP + image_newline (LLaVA-NeXT / OneVision); HF keeps image_newline beside the projector, in the model
    "anyres_mlp": ProjectorPart(config=_mlp("anyres_mlp"), rules=lambda p: _linears(p) + [
        (re.escape(p.rsplit(".", 1)[0] + ".image_newline") if "." in p else r"image_newline",
         "projector.image_newline")]),
    # RMSNorm -> s x s unfold + merging_layer -> MLP (Mistral3, LightOnOcr)
    "unfold_merge_mlp": ProjectorPart(config=_mlp("unfold_merge_mlp"), rules=lambda p: _linears(p) + [
        (rf"{re.escape(p)}\.norm\.weight", "projector.norm.w"),
        (rf"{re.escape(p)}\.patch_merger\.merging_layer\.weight", "projector.merging_layer.weight")]),
    # pixel shuffle -> fc1 -> act -> fc2 -> act (HF keeps this adapter in the tower) -> linear (Llama 4)
    "pixel_shuffle_adapter": ProjectorPart(config=llama4_adapter_config, rules=llama4_adapter_rules),
    # visual tokenizer head (fold, linear, LayerNorm, softmax over visual words) x visual embedding table (Ovis 2);
    # the prefix is the model's (HF keeps the head in the vision tower and the table beside it)
    "visual_embedding_table": ProjectorPart(config=table_config, rules=table_rules),
    # attention pooling of patch windows + SwiGLU (Molmo 2's adapter; settings: heads, widths, biases)
    "attention_pool": ProjectorPart(config=attention_pool_config, rules=attention_pool_rules),
}


def _conv_downsample(d_in: int, d_out: int, settings: dict[str, Any]) -> ProjectorConfig:
    """No activation: conv -> conv -> Linear (settings: bias of the Linear, grid of the tower)."""
    return ProjectorConfig(d_in=d_in, d_out=d_out, bias=settings["bias"], kind="conv_downsample",
                           extra={"grid": settings["grid"]})


PROJECTOR_PARTS["conv_downsample"] = ProjectorPart(config=_conv_downsample, rules=lambda p: [
    (rf"{re.escape(p)}\.conv_upsampler(1|2)\.weight", r"projector.conv\1.weight"),
    (rf"{re.escape(p)}\.multimodal_projector\.(weight|bias)", r"projector.linear.\1")])


def projector_part(kind: str) -> ProjectorPart:
    if kind not in PROJECTOR_PARTS:
        raise ValueError(f"unknown projector part {kind!r}; known: {', '.join(sorted(PROJECTOR_PARTS))}")
    return PROJECTOR_PARTS[kind]
