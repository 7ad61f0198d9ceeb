"""SigLIP vision towers (as inside LLaVA-OneVision / LLaVA-NeXT) -> VisionConfig + key rules.

No class token, a biased patch conv, learned positions, no pre-norm. VLMs read SigLIP's
``hidden_states`` (HF captures them with ``tie_last_hidden_states=False``), so ``post_layernorm`` and
the attention-pooling ``head`` never touch the features: their tensors are ignored, with the reason.
"""

from __future__ import annotations

import re
from typing import Any

from hooked_vlm.config import VisionConfig

from ._vit import check_feature_layers, patch_embedding_rules, vit_layer_rules, vit_tower
from .base import UnsupportedConfigError, check_fields

SIGLIP_VISION_FIELDS = {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
                        "image_size", "patch_size", "hidden_act", "layer_norm_eps", "vision_use_head"}


def siglip_vision_config(vc: Any, feature_layers: tuple[int, ...], feature_select: str) -> VisionConfig:
    check_fields(vc, SIGLIP_VISION_FIELDS, "vision_config (siglip_vision_model)")
    check_feature_layers(vc, feature_layers)
    if feature_select != "full":
        raise UnsupportedConfigError(f"vision_feature_select_strategy={feature_select!r} with a SigLIP tower (no class "
                                     "token: 'default' would drop a real patch and HF's tile reshape fails); "
                                     "supported: 'full'")
    tower = vit_tower(vc)
    return VisionConfig(tower=tower, image_size=vc.image_size, patch_size=vc.patch_size, n_channels=vc.num_channels,
                        class_token=False, patch_bias=True, ln_pre=False, feature_layers=tuple(feature_layers),
                        feature_select=feature_select)


def siglip_last_hidden_config(vc: Any) -> VisionConfig:
    """A SigLIP tower read at its ``last_hidden_state``: AFTER ``post_layernorm`` (Gemma 3, DeepSeek-VL)."""
    check_fields(vc, SIGLIP_VISION_FIELDS, "vision_config (siglip_vision_model)")
    return VisionConfig(tower=vit_tower(vc), image_size=vc.image_size, patch_size=vc.patch_size, kind="vit_post_norm",
                        n_channels=vc.num_channels, class_token=False, patch_bias=True, ln_pre=False,
                        feature_layers=(-1,), feature_select="full")


def siglip_rules(prefix: str) -> list[tuple[str, str]]:
    """Key rules for an HF SiglipVisionModel under ``prefix`` (e.g. 'model.vision_tower')."""
    return patch_embedding_rules(prefix) + vit_layer_rules(prefix)


def siglip_ignored(prefix: str) -> list[tuple[str, str]]:
    p = re.escape(prefix)
    return [
        (rf"{p}\.post_layernorm\.(weight|bias)", "VLMs read SigLIP's hidden_states, which are taken before post_layernorm"),
        (rf"{p}\.head\..*", "SigLIP's attention-pooling head makes the pooled output, which VLMs do not read"),
        (rf"{p}\.embeddings\.position_ids", "a constant arange buffer"),
    ]
