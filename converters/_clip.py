"""CLIP vision towers (as inside LLaVA) -> VisionConfig + key rules."""

from __future__ import annotations

import re
from typing import Any

from hooked_vlm.config import VisionConfig

from ._vit import check_feature_layers, vit_layer_rules, vit_tower
from .base import UnsupportedConfigError, check_fields

CLIP_VISION_FIELDS = {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
                      "image_size", "patch_size", "hidden_act", "layer_norm_eps", "projection_dim", "vocab_size"}


def clip_vision_config(vc: Any, feature_layers: tuple[int, ...], feature_select: str) -> VisionConfig:
    if vc.model_type != "clip_vision_model":
        raise UnsupportedConfigError(f"vision model type {vc.model_type!r} is not supported here; supported: clip_vision_model")
    check_fields(vc, CLIP_VISION_FIELDS, "vision_config (clip_vision_model)")
    check_feature_layers(vc, feature_layers)
    if feature_select not in ("default", "full"):
        raise UnsupportedConfigError(f"vision_feature_select_strategy={feature_select!r}: HF selects image features by "
                                     "it and this converter knows only 'default' (drop the class token) and 'full'")
    tower = vit_tower(vc)
    return VisionConfig(tower=tower, image_size=vc.image_size, patch_size=vc.patch_size, n_channels=vc.num_channels,
                        class_token=True, patch_bias=False, ln_pre=True, feature_layers=tuple(feature_layers),
                        feature_select=feature_select)


def clip_rules(prefix: str) -> list[tuple[str, str]]:
    """Key rules for an HF CLIPVisionModel under ``prefix`` (e.g. 'model.vision_tower')."""
    p = re.escape(prefix)
    return [
        (rf"{p}\.embeddings\.patch_embedding\.weight", "vision.patch_embed.weight"),
        (rf"{p}\.embeddings\.class_embedding", "vision.class_embedding"),
        (rf"{p}\.embeddings\.position_embedding\.weight", "vision.pos_embed"),
        (rf"{p}\.pre_layrnorm\.weight", "vision.ln_pre.w"),
        (rf"{p}\.pre_layrnorm\.bias", "vision.ln_pre.b"),
    ] + vit_layer_rules(prefix)


def clip_aliases(prefix: str) -> list[tuple[str, str]]:
    """Older checkpoints (and the hub's llava-hf ones) keep CLIPVisionModel's inner ``vision_model.``."""
    return [(rf"^{re.escape(prefix)}\.vision_model\.", f"{prefix}.")]


def clip_ignored(prefix: str) -> list[tuple[str, str]]:
    p = re.escape(prefix)
    return [
        (rf"{p}\.post_layernorm\.(weight|bias)", "CLIP's post_layernorm acts on the pooled class token only; VLMs read hidden states"),
        (rf"{p}\.embeddings\.position_ids", "a constant arange buffer"),
    ]
