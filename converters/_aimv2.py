"""The AIMv2-style ViT of Ovis 2 (``vision_config.model_type="ovis2_vision"``) -> VisionConfig + key rules, and its
visual tokenizer head + visual embedding table as the ``visual_embedding_table`` projector part.

The tower is the shared ViT with config fields: a biased patch conv, an RMS norm on the patch embeddings before the
learned positions (``patch_norm``), no class token, pre-norm RMS blocks with bias-free (``qkv_bias``) q / k / v /
out projections and a SwiGLU MLP (``mlp_bias``), and a final RMS norm whose output is what HF's Ovis 2 reads (its
``last_hidden_state``): kind ``vit_post_norm``. The position table has exactly ``(image_size / patch_size)**2`` rows
and HF never interpolates it, so images are fixed-size crops.

HF keeps the visual tokenizer's head (``head_linear``, ``head_norm``) inside the vision model and the visual embedding
table beside it (``model.visual_embeddings_table``); ``vision_config`` carries the head's settings (``hidden_stride``,
``vocab_size`` = rows of the table, ``num_visual_indicator_tokens``, ``tokenize_function``), so this part handles them
and :func:`table_settings` hands them to the projector part.
"""

from __future__ import annotations

import re
from typing import Any

from hooked_vlm.config import ProjectorConfig, TowerConfig, VisionConfig

from .base import UnsupportedConfigError, check_fields

AIMV2_VISION_FIELDS = {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
                       "image_size", "patch_size", "rms_norm_eps", "qkv_bias", "mlp_bias", "hidden_act", "vocab_size",
                       "hidden_stride", "num_visual_indicator_tokens", "tokenize_function"}
_ORIGINAL = ("a field of the original remote-code Ovis visual tokenizer config that HF's conversion script copies into "
             "vision_config; HF's Ovis2 model never reads it (modeling_ovis2.py)")
#: vision_config fields HF's Ovis2 never reads, with the reason
AIMV2_VISION_IGNORED = {
    "tau": _ORIGINAL + ": the Gumbel temperature, used only by gumbel_argmax (refused)",
    "depths": _ORIGINAL + ": HF builds num_hidden_layers layers",
    "drop_cls_token": _ORIGINAL + ": the AIMv2 tower has no class token",
    "backbone_kwargs": _ORIGINAL, "use_indicators": _ORIGINAL, "hd_booster": _ORIGINAL,
}
#: HF's tokenize_function -> our projector's tokenize setting (gumbel_argmax samples noise: refused)
TOKENIZE = {"softmax": "softmax", "st_argmax": "hard"}


def _side(value: Any, name: str) -> int:
    a, b = (value, value) if isinstance(value, int) else tuple(value)
    if a != b:
        raise UnsupportedConfigError(f"vision_config.{name}={list(value)!r}: only square {name}s are supported (HF's "
                                     "visual tokenizer folds a square patch grid)")
    return int(a)


def aimv2_vision_config(vc: Any, feature_layers: tuple[int, ...], feature_select: str) -> VisionConfig:
    """HF reads the tower's last_hidden_state (after its final RMS norm): every patch of the last layer."""
    where = f"vision_config ({vc.model_type})"
    check_fields(vc, AIMV2_VISION_FIELDS, where, AIMV2_VISION_IGNORED)
    if tuple(feature_layers) != (-1,) or feature_select != "full":
        raise UnsupportedConfigError(f"{where}: the tower is read after its final norm (every patch of the last layer); "
                                     f"feature layers {feature_layers} / selection {feature_select!r} do not apply")
    size, patch = _side(vc.image_size, "image_size"), _side(vc.patch_size, "patch_size")
    if vc.tokenize_function not in TOKENIZE:
        raise UnsupportedConfigError(
            f"{where}: tokenize_function={vc.tokenize_function!r}: HF samples Gumbel noise for every image token, so no "
            f"two forwards agree; supported: {', '.join(TOKENIZE)}")
    stride = int(vc.hidden_stride)
    if stride < 1 or (size // patch) % stride:
        raise UnsupportedConfigError(
            f"{where}: hidden_stride={vc.hidden_stride} does not divide the {size // patch}-patch grid: HF then pads the "
            "token and image axes of the features (not the grid), so its reshape fails or, for some image counts, "
            "silently mixes images; give a stride dividing image_size / patch_size")
    tower = TowerConfig(
        n_layers=vc.num_hidden_layers, d_model=vc.hidden_size, n_heads=vc.num_attention_heads,
        d_mlp=vc.intermediate_size, act_fn=vc.hidden_act, gated_mlp=True, normalization_type="RMS",
        norm_eps=vc.rms_norm_eps, attn_bias=bool(vc.qkv_bias), attn_out_bias=bool(vc.qkv_bias),
        mlp_bias=bool(vc.mlp_bias), causal=False, positional="learned")
    return VisionConfig(tower=tower, image_size=size, patch_size=patch, kind="vit_post_norm", n_channels=vc.num_channels,
                        class_token=False, patch_bias=True, ln_pre=False, patch_norm=True, feature_layers=(-1,),
                        feature_select="full")


def aimv2_rules(prefix: str) -> list[tuple[str, str]]:
    """Key rules for HF's ``Ovis2VisionTransformer`` under ``prefix`` (e.g. 'model.vision_tower.transformer')."""
    p = re.escape(prefix)
    layer = rf"{p}\.encoder\.layers\.(\d+)"
    return [
        (rf"{p}\.embeddings\.patch_embedding\.(weight|bias)", r"vision.patch_embed.\1"),
        (rf"{p}\.embeddings\.rms_norm\.weight", "vision.ln_patch.w"),
        (rf"{p}\.embeddings\.position_embedding\.weight", "vision.pos_embed"),
        (rf"{layer}\.attention\.(q|k|v)_proj\.(weight|bias)", r"vision.blocks.\1.attn.\2_proj.\3"),
        (rf"{layer}\.attention\.out_proj\.(weight|bias)", r"vision.blocks.\1.attn.o_proj.\2"),
        (rf"{layer}\.rms_norm(1|2)\.weight", r"vision.blocks.\1.ln\2.w"),
        (rf"{layer}\.ffn\.(gate|up|down)_proj\.(weight|bias)", r"vision.blocks.\1.mlp.\2_proj.\3"),
        (rf"{p}\.rms_norm\.weight", "vision.ln_post.w"),
    ]


def aimv2_ignored(prefix: str) -> list[tuple[str, str]]:
    return [(rf"{re.escape(prefix)}\.embeddings\.position_ids", "a constant arange buffer")]


# ---------------------------------------------------------------- the visual tokenizer head + embedding table
def table_settings(hf: Any) -> dict[str, Any]:
    """The projector settings from HF's Ovis 2 config (``vision_config`` holds the head's; the table's width is the
    top-level ``hidden_size``, checked equal to the LM's by the family)."""
    vc = hf.vision_config
    return {"act_fn": "identity", "bias": False, "hidden_stride": int(vc.hidden_stride), "visual_vocab": vc.vocab_size,
            "n_markers": vc.num_visual_indicator_tokens, "tokenize": TOKENIZE[vc.tokenize_function],
            "norm_eps": 1e-5}  # nn.LayerNorm's default: HF's head_norm takes no eps


def table_config(d_in: int, d_out: int, settings: dict[str, Any]) -> ProjectorConfig:
    extra = {k: v for k, v in settings.items() if k not in ("act_fn", "bias")}
    return ProjectorConfig(d_in=d_in, d_out=d_out, act_fn=settings["act_fn"], bias=settings["bias"],
                           kind="visual_embedding_table", extra=extra)


def table_rules(prefix: str) -> list[tuple[str, str]]:
    """HF's head (``{prefix}.vision_tower.head_*``) and table (``{prefix}.visual_embeddings_table``) under the model."""
    p = re.escape(prefix)
    return [
        (rf"{p}\.vision_tower\.head_linear\.weight", "projector.head_linear.weight"),
        (rf"{p}\.vision_tower\.head_norm\.(weight|bias)", r"projector.head_norm.\1"),
        (rf"{p}\.visual_embeddings_table\.weight", "projector.table"),
    ]
