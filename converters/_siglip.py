"""SigLIP vision towers (as inside LLaVA-OneVision / LLaVA-NeXT) -> VisionConfig + key rules.

No class token, a biased patch conv, learned positions, no pre-norm. VLMs read SigLIP's
``hidden_states`` (HF captures them with ``tie_last_hidden_states=False``), so ``post_layernorm`` and
the attention-pooling ``head`` never touch the features: their tensors are ignored, with the reason.
"""

from __future__ import annotations

import re
from typing import Any

from hooked_vlm.config import TowerConfig, VisionConfig

from .base import UnsupportedConfigError, check_fields

SIGLIP_VISION_FIELDS = {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
                        "image_size", "patch_size", "hidden_act", "layer_norm_eps", "vision_use_head"}


def siglip_vision_config(vc: Any, feature_layers: tuple[int, ...], feature_select: str) -> VisionConfig:
    check_fields(vc, SIGLIP_VISION_FIELDS, "vision_config (siglip_vision_model)")
    n_hidden = vc.num_hidden_layers + 1
    for layer in feature_layers:
        if not -n_hidden <= layer < n_hidden:
            raise UnsupportedConfigError(f"vision_feature_layer {layer} is out of range for a {vc.num_hidden_layers}-layer tower")
    if feature_select != "full":
        raise UnsupportedConfigError(f"vision_feature_select_strategy {feature_select!r} with a SigLIP tower (no class "
                                     "token: 'default' would drop a real patch); supported: 'full'")
    tower = TowerConfig(
        n_layers=vc.num_hidden_layers, d_model=vc.hidden_size, n_heads=vc.num_attention_heads, d_mlp=vc.intermediate_size,
        act_fn=vc.hidden_act, gated_mlp=False, normalization_type="LN", norm_eps=vc.layer_norm_eps,
        attn_bias=True, attn_out_bias=True, mlp_bias=True, causal=False, positional="learned",
    )
    return VisionConfig(tower=tower, image_size=vc.image_size, patch_size=vc.patch_size, n_channels=vc.num_channels,
                        class_token=False, patch_bias=True, ln_pre=False, feature_layers=tuple(feature_layers),
                        feature_select=feature_select)


def siglip_rules(prefix: str) -> list[tuple[str, str]]:
    """Key rules for an HF SiglipVisionModel under ``prefix`` (e.g. 'model.vision_tower')."""
    p = re.escape(prefix)
    return [
        (rf"{p}\.embeddings\.patch_embedding\.(weight|bias)", r"vision.patch_embed.\1"),
        (rf"{p}\.embeddings\.position_embedding\.weight", "vision.pos_embed"),
        (rf"{p}\.encoder\.layers\.(\d+)\.self_attn\.(q|k|v)_proj\.(weight|bias)", r"vision.blocks.\1.attn.\2_proj.\3"),
        (rf"{p}\.encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", r"vision.blocks.\1.attn.o_proj.\2"),
        (rf"{p}\.encoder\.layers\.(\d+)\.layer_norm(1|2)\.weight", r"vision.blocks.\1.ln\2.w"),
        (rf"{p}\.encoder\.layers\.(\d+)\.layer_norm(1|2)\.bias", r"vision.blocks.\1.ln\2.b"),
        (rf"{p}\.encoder\.layers\.(\d+)\.mlp\.fc1\.(weight|bias)", r"vision.blocks.\1.mlp.up_proj.\2"),
        (rf"{p}\.encoder\.layers\.(\d+)\.mlp\.fc2\.(weight|bias)", r"vision.blocks.\1.mlp.down_proj.\2"),
    ]


def siglip_ignored(prefix: str) -> list[tuple[str, str]]:
    p = re.escape(prefix)
    return [
        (rf"{p}\.post_layernorm\.(weight|bias)", "VLMs read SigLIP's hidden_states, which are taken before post_layernorm"),
        (rf"{p}\.head\..*", "SigLIP's attention-pooling head makes the pooled output, which VLMs do not read"),
        (rf"{p}\.embeddings\.position_ids", "a constant arange buffer"),
    ]
