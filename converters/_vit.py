"""Pieces every CLIP-style ViT encoder shares (CLIP, SigLIP, Idefics3's NaViT, Janus's SigLIP):
the feature-layer range check, the pre-LN tower config and the per-layer key rules."""

from __future__ import annotations

import re
from typing import Any

from hooked_vlm.config import TowerConfig

from .base import UnsupportedConfigError


def check_feature_layers(vc: Any, feature_layers: tuple[int, ...]) -> None:
    """Each ``vision_feature_layer`` must index the tower's hidden states (embeddings + one per layer)."""
    n_hidden = vc.num_hidden_layers + 1
    for layer in feature_layers:
        if not -n_hidden <= layer < n_hidden:
            raise UnsupportedConfigError(f"vision_feature_layer={layer} is out of range for a {vc.num_hidden_layers}-layer "
                                         f"tower (hidden states {-n_hidden}..{n_hidden - 1}): HF's indexing would fail")


def vit_tower(vc: Any, d_mlp: int | None = None, attn_bias: bool = True) -> TowerConfig:
    """Bidirectional pre-LN encoder with learned positions, biased attention and plain MLP."""
    return TowerConfig(
        n_layers=vc.num_hidden_layers, d_model=vc.hidden_size, n_heads=vc.num_attention_heads,
        d_mlp=vc.intermediate_size if d_mlp is None else d_mlp, act_fn=vc.hidden_act, gated_mlp=False,
        normalization_type="LN", norm_eps=vc.layer_norm_eps, attn_bias=attn_bias, attn_out_bias=True, mlp_bias=True,
        causal=False, positional="learned",
    )


def vit_layer_rules(prefix: str, out_proj: str = "out_proj") -> list[tuple[str, str]]:
    """Key rules for ``{prefix}.encoder.layers.N`` (q/k/v/``out_proj``, layer_norm1/2, mlp.fc1/fc2)."""
    layer = rf"{re.escape(prefix)}\.encoder\.layers\.(\d+)"
    return [
        (rf"{layer}\.self_attn\.(q|k|v)_proj\.(weight|bias)", r"vision.blocks.\1.attn.\2_proj.\3"),
        (rf"{layer}\.self_attn\.{out_proj}\.(weight|bias)", r"vision.blocks.\1.attn.o_proj.\2"),
        (rf"{layer}\.layer_norm(1|2)\.weight", r"vision.blocks.\1.ln\2.w"),
        (rf"{layer}\.layer_norm(1|2)\.bias", r"vision.blocks.\1.ln\2.b"),
        (rf"{layer}\.mlp\.fc1\.(weight|bias)", r"vision.blocks.\1.mlp.up_proj.\2"),
        (rf"{layer}\.mlp\.fc2\.(weight|bias)", r"vision.blocks.\1.mlp.down_proj.\2"),
    ]


def patch_embedding_rules(prefix: str) -> list[tuple[str, str]]:
    """A biased patch conv and learned position embeddings under ``{prefix}.embeddings``."""
    p = re.escape(prefix)
    return [
        (rf"{p}\.embeddings\.patch_embedding\.(weight|bias)", r"vision.patch_embed.\1"),
        (rf"{p}\.embeddings\.position_embedding\.weight", "vision.pos_embed"),
    ]


def post_layernorm_rules(prefix: str) -> list[tuple[str, str]]:
    p = re.escape(prefix)
    return [(rf"{p}\.post_layernorm\.weight", "vision.ln_post.w"), (rf"{p}\.post_layernorm\.bias", "vision.ln_post.b")]
