"""Pixtral vision towers (inside LLaVA as mistral-community/pixtral-12b ships it, and inside Mistral3).

RMSNorm (eps fixed at 1e-5 in HF's code), gated MLP, no biases, 2D axial RoPE, images of any size packed
into one block-diagonal sequence: ``hooked_vlm.components.pixtral_vision``.
"""

from __future__ import annotations

import re
from typing import Any

from hooked_vlm.config import TowerConfig, VisionConfig

from ._vit import check_feature_layers
from .base import UnsupportedConfigError, check_fields

PIXTRAL_VISION_FIELDS = {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
                         "image_size", "patch_size", "hidden_act", "rope_parameters", "head_dim",
                         "tie_word_embeddings"}  # in pixtral-12b's vision_config; a ViT has no word embeddings
PIXTRAL_NORM_EPS = 1e-5  # hard-coded in HF's PixtralRMSNorm uses (not a config field)


def pixtral_vision_config(vc: Any, feature_layers: tuple[int, ...]) -> VisionConfig:
    check_fields(vc, PIXTRAL_VISION_FIELDS, "vision_config (pixtral)")
    d_head = vc.hidden_size // vc.num_attention_heads
    if getattr(vc, "head_dim", None) not in (None, d_head):
        raise UnsupportedConfigError(f"vision_config (pixtral): head_dim={vc.head_dim} differs from hidden_size // "
                                     f"num_attention_heads = {d_head}: HF's pixtral attention splits heads of {d_head} "
                                     f"while its rotary is {vc.head_dim} wide, so HF's own forward cannot run it")
    rope = dict(vc.rope_parameters or {})
    if rope.get("rope_type", "axial") != "axial":
        raise UnsupportedConfigError(f"vision_config (pixtral): rope_parameters.rope_type={rope.get('rope_type')!r}; "
                                     "supported: 'axial' (the 2-D rotary over patch rows and columns implemented here)")
    check_feature_layers(vc, feature_layers)
    tower = TowerConfig(
        n_layers=vc.num_hidden_layers, d_model=vc.hidden_size, n_heads=vc.num_attention_heads, d_mlp=vc.intermediate_size,
        act_fn=vc.hidden_act, gated_mlp=True, normalization_type="RMS", norm_eps=PIXTRAL_NORM_EPS,
        causal=False, positional="rope2d", max_position_embeddings=vc.image_size // vc.patch_size,
    )
    return VisionConfig(tower=tower, image_size=vc.image_size, patch_size=vc.patch_size, kind="pixtral",
                        n_channels=vc.num_channels, class_token=False, patch_bias=False, ln_pre=True,
                        feature_layers=tuple(feature_layers), feature_select="full",
                        extra={"rope_theta": float(rope.get("rope_theta", 10000.0))})


def pixtral_rules(prefix: str) -> list[tuple[str, str]]:
    """Key rules for an HF PixtralVisionModel under ``prefix`` (e.g. 'model.vision_tower')."""
    p = re.escape(prefix)
    layer = rf"{p}\.transformer\.layers\.(\d+)"
    return [
        (rf"{p}\.patch_conv\.weight", "vision.patch_embed.weight"),
        (rf"{p}\.ln_pre\.weight", "vision.ln_pre.w"),
        (rf"{layer}\.attention\.(q|k|v|o)_proj\.weight", r"vision.blocks.\1.attn.\2_proj.weight"),
        (rf"{layer}\.attention_norm\.weight", r"vision.blocks.\1.ln1.w"),
        (rf"{layer}\.ffn_norm\.weight", r"vision.blocks.\1.ln2.w"),
        (rf"{layer}\.feed_forward\.(gate|up|down)_proj\.weight", r"vision.blocks.\1.mlp.\2_proj.weight"),
    ]


def pixtral_marker_roles(cfg: Any, processor: Any) -> None:
    """[IMG_BREAK] / [IMG_END] ids live in the tokenizer, not the HF config: take them from the processor."""
    tok = getattr(processor, "tokenizer", None)
    if tok is None or cfg.roles is None:
        return  # no processor: spans have no row_break / eoi (the forward is unaffected)
    for attr, field in (("image_break_token", "row_break_token_ids"), ("image_end_token", "eoi_token_id")):
        token = getattr(processor, attr, None)
        tid = None if token is None else tok.convert_tokens_to_ids(token)
        if tid is not None and tid != tok.unk_token_id:
            setattr(cfg.roles, field, (tid,) if field == "row_break_token_ids" else tid)
