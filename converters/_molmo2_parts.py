"""Molmo 2's language model (``molmo2_text``) and vision tower (``molmo2_vision``) as parts (converters/parts.py).

The LM is a Qwen3-style decoder: q / k RMS norms per head (``qk_norm_type="qwen3"``) or over the whole projection
(``"olmo"``: ``qk_norm_scope="all"``), post-sublayer norms when ``norm_after`` (``norm_placement="post_sublayer"``),
an embedding table ``additional_vocab_size`` rows longer than ``lm_head`` (the image special tokens live there),
q / k / v fused as ``attn.qkv`` and gate / up as ``mlp.gate_up_proj`` (the checkpoint's ``att_proj`` / ``ff_proj``).
RoPE: ``rope_scaling_layers`` names the layers with the scaled table; with a scaled ``rope_type`` that is not every
layer it is refused (one table per tower here); with the default type both tables are the same.

The tower is a pre-LN ViT on pre-cut patches (``pixel_values`` [crop, patch, patch_size**2 * channels], a Linear
patch embedding, which the pipeline turns into a Conv2d on the crop image) with a learned position per patch, biased
attention (GQA) and a plain MLP; no class token, no pre / post norm.

The adapter is the projector part ``attention_pool`` (components/attention_pool.py; HF Molmo2Adapter: ``image_pooling_2d``
then ``image_projector``).

Checkpoints: ``save_pretrained`` (and the hub) write the original layout (``model.transformer.blocks.N.att_proj``,
``model.vision_backbone.image_vit...``); the in-memory one is ``model.language_model.layers.N.self_attn.q_proj``...
Both load: the renames are aliases, the fused tensors rules, the split ones parts (converters/molmo2.py).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import einops
import torch

from hooked_vlm.config import ProjectorConfig, TowerConfig, VisionConfig

from ._decoder import check_rope_type
from ._vit import vit_tower
from .base import UnsupportedConfigError, check_fields

_DROPOUT = "a dropout rate (training only; the forward in eval mode never reads it)"
TEXT_FIELDS = {"vocab_size", "additional_vocab_size", "hidden_size", "num_attention_heads", "num_key_value_heads",
               "head_dim", "attention_bias", "qk_norm_type", "num_hidden_layers", "intermediate_size", "hidden_act",
               "max_position_embeddings", "rope_parameters", "rope_scaling_layers", "rms_norm_eps", "norm_after",
               "tie_word_embeddings"}
TEXT_IGNORED = {"embedding_dropout": _DROPOUT, "residual_dropout": _DROPOUT,
                "use_qk_norm": "a key of the remote-code release; HF's Molmo2Attention always applies q_norm / k_norm "
                               "(the checkpoints hold their weights) and never reads it"}
VISION_FIELDS = {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                 "head_dim", "hidden_act", "layer_norm_eps", "image_size", "patch_size", "num_position_embeddings",
                 "num_channels", "attention_bias"}
FLOAT32_ATTENTION = ("a key of the remote-code release (attention computed in float32 there); HF's Molmo2 attention "
                     "never reads it")
VISION_IGNORED = {"residual_dropout": _DROPOUT, "float32_attention": FLOAT32_ATTENTION}


def molmo2_text_config(tc: Any) -> TowerConfig:
    where = "text_config (molmo2_text)"
    check_fields(tc, TEXT_FIELDS, where, TEXT_IGNORED)
    rope = dict(tc.rope_parameters or {"rope_type": "default", "rope_theta": 10000.0})
    check_rope_type(rope, where)
    scaled = set(tc.rope_scaling_layers if tc.rope_scaling_layers is not None else range(tc.num_hidden_layers))
    if rope.get("rope_type", "default") != "default" and scaled != set(range(tc.num_hidden_layers)):
        raise UnsupportedConfigError(
            f"{where}: rope_scaling_layers={sorted(scaled)} with rope_type={rope['rope_type']!r}: HF rotates those "
            "layers with the scaled table and the others with an unscaled one; this converter has one RoPE table per "
            "tower (with rope_type 'default' the two tables are equal and any rope_scaling_layers is accepted)")
    if tc.qk_norm_type not in ("qwen3", "olmo"):
        raise UnsupportedConfigError(f"{where}: qk_norm_type={tc.qk_norm_type!r}; supported: 'qwen3', 'olmo'")
    return TowerConfig(
        n_layers=tc.num_hidden_layers, d_model=tc.hidden_size, n_heads=tc.num_attention_heads,
        n_key_value_heads=tc.num_key_value_heads, d_head=tc.head_dim or tc.hidden_size // tc.num_attention_heads,
        d_mlp=tc.intermediate_size, act_fn=tc.hidden_act, gated_mlp=True, normalization_type="RMS",
        norm_eps=tc.rms_norm_eps, attn_bias=bool(tc.attention_bias), attn_out_bias=False, mlp_bias=False,
        causal=True, positional="rope", rope_parameters=rope, max_position_embeddings=tc.max_position_embeddings,
        qk_norm="RMS", qk_norm_scope="head" if tc.qk_norm_type == "qwen3" else "all",
        norm_placement="post_sublayer" if tc.norm_after else "pre", fused_qkv=True, fused_gate_up=True,
    )


def molmo2_text_rules(prefix: str) -> list[tuple[str, str]]:
    """The decoder under ``prefix`` (in-memory names; the original layout is aliased onto them, converters/molmo2.py)."""
    p = re.escape(prefix)
    layer = rf"{p}\.layers\.(\d+)"
    return [
        (rf"{p}\.embed_tokens\.weight", "embed.weight"),
        (rf"{layer}\.input_layernorm\.weight", r"blocks.\1.ln1.w"),
        (rf"{layer}\.post_attention_layernorm\.weight", r"blocks.\1.ln2.w"),
        (rf"{layer}\.self_attn\.att_proj\.(weight|bias)", r"blocks.\1.attn.qkv.\2"),  # the original fused q | k | v
        (rf"{layer}\.self_attn\.o_proj\.weight", r"blocks.\1.attn.o_proj.weight"),
        (rf"{layer}\.self_attn\.(q|k)_norm\.weight", r"blocks.\1.attn.\2_norm.w"),
        (rf"{layer}\.mlp\.ff_proj\.weight", r"blocks.\1.mlp.gate_up_proj.weight"),  # the original up | gate
        (rf"{layer}\.mlp\.down_proj\.weight", r"blocks.\1.mlp.down_proj.weight"),
        (rf"{p}\.norm\.weight", "ln_final.w"),
        (r"lm_head\.weight", "unembed.weight"),
    ]


def swap_halves(t: torch.Tensor) -> torch.Tensor:
    """The original ``ff_proj`` is up rows then gate rows (HF chunks it into up, gate); ours gate then up."""
    return torch.cat([t[t.shape[0] // 2:], t[: t.shape[0] // 2]], 0)


def molmo2_vision_config(vc: Any, feature_layers: tuple[int, ...], feature_select: str) -> VisionConfig:
    """``feature_layers``: HF hidden-state indices (0 = embeddings), as VisionConfig reads them."""
    where = "vision_config (molmo2_vision)"
    check_fields(vc, VISION_FIELDS, where, VISION_IGNORED)
    height, width = vc.image_size
    if height != width or height % vc.patch_size:
        raise UnsupportedConfigError(f"{where}: image_size={list(vc.image_size)} with patch_size={vc.patch_size}: only "
                                     "square crops of whole patches are implemented")
    if vc.num_position_embeddings != (height // vc.patch_size) ** 2:
        raise UnsupportedConfigError(
            f"{where}: num_position_embeddings={vc.num_position_embeddings} but a crop has {(height // vc.patch_size) ** 2}"
            " patches: HF adds the table to the patches without resampling, so the two must be equal")
    if feature_select != "full":
        raise UnsupportedConfigError(f"{where}: the tower has no class token; feature selection {feature_select!r}")
    tower = dataclasses.replace(vit_tower(vc, attn_bias=bool(vc.attention_bias)), n_key_value_heads=vc.num_key_value_heads,
                                d_head=vc.head_dim, attn_out_bias=bool(vc.attention_bias))
    return VisionConfig(tower=tower, image_size=height, patch_size=vc.patch_size, n_channels=vc.num_channels,
                        class_token=False, patch_bias=True, ln_pre=False, feature_layers=tuple(feature_layers),
                        feature_select="full")


def molmo2_vision_rules(prefix: str) -> list[tuple[str, str]]:
    p = re.escape(prefix)
    layer = rf"{p}\.layers\.(\d+)"
    return [
        (rf"{p}\.patch_embedding\.(weight|bias)", r"vision.patch_embed.\1"),
        (rf"{p}\.positional_embedding", "vision.pos_embed"),
        (rf"{layer}\.self_attn\.(q|k|v|o)_proj\.(weight|bias)", r"vision.blocks.\1.attn.\2_proj.\3"),
        (rf"{layer}\.layer_norm(1|2)\.weight", r"vision.blocks.\1.ln\2.w"),
        (rf"{layer}\.layer_norm(1|2)\.bias", r"vision.blocks.\1.ln\2.b"),
        (rf"{layer}\.mlp\.fc1\.(weight|bias)", r"vision.blocks.\1.mlp.up_proj.\2"),
        (rf"{layer}\.mlp\.fc2\.(weight|bias)", r"vision.blocks.\1.mlp.down_proj.\2"),
    ]


def patch_linear_to_conv(patch: int, channels: int):
    """HF's Linear patch embedding [d, (py px c)] (patches flattened rows, then columns, then channels) -> the
    Conv2d weight [d, c, py, px] of our tower."""
    def transform(w: torch.Tensor) -> torch.Tensor:
        return einops.rearrange(w, "d (py px c) -> d c py px", py=patch, px=patch, c=channels).contiguous()
    return transform


ATTENTION_POOL_SETTINGS = ("n_heads", "n_key_value_heads", "d_head", "d_pool", "d_hidden", "attn_bias", "mlp_bias")


def attention_pool_config(d_in: int, d_out: int, settings: dict[str, Any]) -> ProjectorConfig:
    """settings: ``act_fn`` (the MLP's) and :data:`ATTENTION_POOL_SETTINGS` (components/attention_pool.py)."""
    missing = [k for k in ("act_fn",) + ATTENTION_POOL_SETTINGS if k not in settings]
    if missing:
        raise ValueError(f"the attention_pool projector needs the settings {missing}")
    return ProjectorConfig(d_in=d_in, d_out=d_out, act_fn=settings["act_fn"], bias=bool(settings["attn_bias"]),
                           kind="attention_pool", extra={k: settings[k] for k in ATTENTION_POOL_SETTINGS})


def attention_pool_rules(prefix: str) -> list[tuple[str, str]]:
    """HF's Molmo2Adapter under ``prefix``: the pooling attention, then the SwiGLU projector."""
    p = re.escape(prefix)
    return [(rf"{p}\.image_pooling_2d\.(q|k|v|o)_proj\.(weight|bias)", r"projector.\1_proj.\2"),
            (rf"{p}\.image_projector\.(gate|up|down)_proj\.(weight|bias)", r"projector.mlp.\1_proj.\2")]
