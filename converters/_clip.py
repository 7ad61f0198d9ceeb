"""CLIP vision towers (as inside LLaVA) -> VisionConfig + key rules."""

from __future__ import annotations

import re
from typing import Any

from hooked_vlm.config import TowerConfig, VisionConfig

from .base import UnsupportedConfigError, check_fields

CLIP_VISION_FIELDS = {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
                      "image_size", "patch_size", "hidden_act", "layer_norm_eps", "projection_dim", "vocab_size"}


def clip_vision_config(vc: Any, feature_layers: tuple[int, ...], feature_select: str) -> VisionConfig:
    if vc.model_type != "clip_vision_model":
        raise UnsupportedConfigError(f"vision model type {vc.model_type!r} is not supported here; supported: clip_vision_model")
    check_fields(vc, CLIP_VISION_FIELDS, "vision_config (clip_vision_model)")
    n_hidden = vc.num_hidden_layers + 1
    for layer in feature_layers:
        if not -n_hidden <= layer < n_hidden:
            raise UnsupportedConfigError(f"vision_feature_layer {layer} is out of range for a {vc.num_hidden_layers}-layer tower")
    if feature_select not in ("default", "full"):
        raise UnsupportedConfigError(f"vision_feature_select_strategy {feature_select!r}; supported: 'default', 'full'")
    tower = TowerConfig(
        n_layers=vc.num_hidden_layers, d_model=vc.hidden_size, n_heads=vc.num_attention_heads, d_mlp=vc.intermediate_size,
        act_fn=vc.hidden_act, gated_mlp=False, normalization_type="LN", norm_eps=vc.layer_norm_eps,
        attn_bias=True, attn_out_bias=True, mlp_bias=True, causal=False, positional="learned",
    )
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
        (rf"{p}\.encoder\.layers\.(\d+)\.self_attn\.(q|k|v)_proj\.(weight|bias)", r"vision.blocks.\1.attn.\2_proj.\3"),
        (rf"{p}\.encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", r"vision.blocks.\1.attn.o_proj.\2"),
        (rf"{p}\.encoder\.layers\.(\d+)\.layer_norm1\.weight", r"vision.blocks.\1.ln1.w"),
        (rf"{p}\.encoder\.layers\.(\d+)\.layer_norm1\.bias", r"vision.blocks.\1.ln1.b"),
        (rf"{p}\.encoder\.layers\.(\d+)\.layer_norm2\.weight", r"vision.blocks.\1.ln2.w"),
        (rf"{p}\.encoder\.layers\.(\d+)\.layer_norm2\.bias", r"vision.blocks.\1.ln2.b"),
        (rf"{p}\.encoder\.layers\.(\d+)\.mlp\.fc1\.(weight|bias)", r"vision.blocks.\1.mlp.up_proj.\2"),
        (rf"{p}\.encoder\.layers\.(\d+)\.mlp\.fc2\.(weight|bias)", r"vision.blocks.\1.mlp.down_proj.\2"),
    ]


def clip_aliases(prefix: str) -> list[tuple[str, str]]:
    """Older checkpoints (and the hub's llava-hf ones) keep CLIPVisionModel's inner ``vision_model.``."""
    return [(rf"^{re.escape(prefix)}\.vision_model\.", f"{prefix}.")]


def clip_ignored(prefix: str) -> list[tuple[str, str]]:
    p = re.escape(prefix)
    return [
        (rf"{p}\.post_layernorm\.(weight|bias)", "CLIP's post_layernorm acts on the pooled class token only; VLMs read hidden states"),
        (rf"{p}\.embeddings\.position_ids", "a constant arange buffer"),
    ]
