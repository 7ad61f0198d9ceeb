"""SAM's ViT (``sam_vision_model``: DeepSeek-VL-Hybrid's high-resolution tower; ``got_ocr2_vision``: GOT-OCR2's
tower, the same module) -> VisionConfig (kind ``sam_vit``) + key rules.

Windowed layers and the global ones (``global_attn_indexes``) are two layer kinds of the shared block
(``window_rel_pos_attention`` / ``global_rel_pos_attention``), both with decomposed relative positions
(``use_rel_pos``); an absolute position table (``use_abs_pos``); the conv neck to ``output_channels``.
"""

from __future__ import annotations

import re
from typing import Any

from hooked_vlm.config import RelPosAttentionConfig, TowerConfig, VisionConfig

from .base import UnsupportedConfigError, check_fields

SAM_VISION_FIELDS = {"hidden_size", "output_channels", "num_hidden_layers", "num_attention_heads", "num_channels",
                     "image_size", "patch_size", "hidden_act", "layer_norm_eps", "qkv_bias", "use_abs_pos",
                     "use_rel_pos", "window_size", "global_attn_indexes", "mlp_dim"}
SAM_IGNORED = {
    "mlp_ratio": "SamVisionConfig uses it only to fill mlp_dim when mlp_dim is None; the resolved mlp_dim is read",
    "num_pos_feats": "the prompt encoder's positional embedding (SamPositionalEmbedding); the vision encoder never "
                     "reads it",
    "scale": "the prompt encoder's positional-embedding scale (hidden_size // 2); the vision encoder never reads it",
}


def sam_vision_config(vc: Any, feature_layers: tuple[int, ...] = (), feature_select: str = "full") -> VisionConfig:
    """``feature_layers``: hidden states returned beside the neck output (HF indexing: 0 = embeddings)."""
    where = f"vision_config ({vc.model_type})"
    check_fields(vc, SAM_VISION_FIELDS, where, ignored=SAM_IGNORED)
    for name in ("image_size", "patch_size"):
        if not isinstance(getattr(vc, name), int):
            raise UnsupportedConfigError(f"{where}: {name}={getattr(vc, name)!r}; only a square int size is converted "
                                         "(HF's SamVisionAttention divides image_size by patch_size as ints)")
    if vc.image_size % vc.patch_size:
        raise UnsupportedConfigError(f"{where}: image_size={vc.image_size} is not a multiple of patch_size="
                                     f"{vc.patch_size}")
    n = vc.num_hidden_layers
    bad = [i for i in vc.global_attn_indexes if not 0 <= i < n]
    if bad:
        raise UnsupportedConfigError(f"{where}: global_attn_indexes {bad} are not layers of a {n}-layer tower")
    if vc.window_size < 0:
        raise UnsupportedConfigError(f"{where}: window_size={vc.window_size}; HF's window partition needs >= 0")
    # window_size 0: HF's windowed layers get window 0 too, i.e. they attend globally (SamVisionLayer)
    kinds = tuple("global_rel_pos_attention" if i in vc.global_attn_indexes or vc.window_size == 0
                  else "window_rel_pos_attention" for i in range(n))
    grid = vc.image_size // vc.patch_size
    tower = TowerConfig(
        n_layers=n, d_model=vc.hidden_size, n_heads=vc.num_attention_heads, d_mlp=vc.mlp_dim, act_fn=vc.hidden_act,
        gated_mlp=False, normalization_type="LN", norm_eps=vc.layer_norm_eps, attn_bias=vc.qkv_bias,
        attn_out_bias=True, mlp_bias=True, causal=False, positional="none", layer_types=kinds,
        rel_pos_attention=RelPosAttentionConfig(grid=grid, window=max(vc.window_size, 1), rel_pos=vc.use_rel_pos))
    return VisionConfig(tower=tower, image_size=vc.image_size, patch_size=vc.patch_size, kind="sam_vit",
                        n_channels=vc.num_channels, class_token=False, patch_bias=True, ln_pre=False,
                        feature_layers=tuple(feature_layers), feature_select=feature_select,
                        extra={"d_neck": vc.output_channels, "abs_pos": vc.use_abs_pos,
                               "d_features": vc.output_channels})  # the neck output is what a projector reads


def neck_rules(prefix: str, dest: str) -> list[tuple[str, str]]:
    """A conv neck (conv1, layer_norm1, conv2, layer_norm2) under ``prefix`` -> ours under ``dest``."""
    p = re.escape(prefix)
    return [(rf"{p}\.conv(1|2)\.weight", rf"{dest}.conv\1.weight"),
            (rf"{p}\.layer_norm(1|2)\.weight", rf"{dest}.ln\1.w"),
            (rf"{p}\.layer_norm(1|2)\.bias", rf"{dest}.ln\1.b")]


def sam_rules(prefix: str, dest: str = "vision") -> list[tuple[str, str]]:
    """Key rules for HF's SAM vision encoder under ``prefix`` (the module holding patch_embed / layers / neck)."""
    p = re.escape(prefix)
    layer = rf"{p}\.layers\.(\d+)"
    return [
        (rf"{p}\.patch_embed\.projection\.(weight|bias)", rf"{dest}.patch_embed.\1"),
        (rf"{p}\.pos_embed", rf"{dest}.pos_embed"),
        (rf"{layer}\.layer_norm(1|2)\.weight", rf"{dest}.blocks.\1.ln\2.w"),
        (rf"{layer}\.layer_norm(1|2)\.bias", rf"{dest}.blocks.\1.ln\2.b"),
        (rf"{layer}\.attn\.(qkv|proj)\.(weight|bias)", rf"{dest}.blocks.\1.attn.\2.\3"),
        (rf"{layer}\.attn\.rel_pos_(h|w)", rf"{dest}.blocks.\1.attn.rel_pos_\2"),
        (rf"{layer}\.mlp\.lin1\.(weight|bias)", rf"{dest}.blocks.\1.mlp.up_proj.\2"),
        (rf"{layer}\.mlp\.lin2\.(weight|bias)", rf"{dest}.blocks.\1.mlp.down_proj.\2"),
    ] + neck_rules(f"{prefix}.neck", f"{dest}.neck")


def sam_marker_roles(cfg: Any, processor: Any) -> None:
    """GOT-OCR2's ``<img>`` / ``</img>`` around each image's tokens: their ids live in the tokenizer (the processor's
    ``img_start_token`` / ``img_end_token``), not the HF config. Without a processor the spans have no boi / eoi."""
    tok = getattr(processor, "tokenizer", None)
    if tok is None or cfg.roles is None:
        return
    for attr, field in (("img_start_token", "boi_token_id"), ("img_end_token", "eoi_token_id")):
        token = getattr(processor, attr, None)
        tid = None if token is None else tok.convert_tokens_to_ids(token)
        if tid is not None and tid != tok.unk_token_id:
            setattr(cfg.roles, field, tid)
