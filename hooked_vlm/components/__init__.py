"""Family-agnostic building blocks. Nothing here knows which model family it belongs to.

Vision towers and projectors are picked by ``kind`` (a config field). Adding a kind = one module
+ one line in the tables below ("module:Class", imported on first use).
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

VISION_KINDS = {
    "vit": "hooked_vlm.components.vision:VisionTower",
    "qwen_vit": "hooked_vlm.components.qwen_vision:QwenVisionTower",
    "qwen3_vit": "hooked_vlm.components.qwen3_vision:Qwen3VisionTower",
    "glm4v_vit": "hooked_vlm.components.glm4v_vision:Glm4vVisionTower",
    "navit": "hooked_vlm.components.navit_vision:NaViTVisionTower",
    "pixtral": "hooked_vlm.components.pixtral_vision:PixtralVisionTower",
    "vq": "hooked_vlm.components.vq:VQTokenizer",
    "vit_post_norm": "hooked_vlm.components.vision_post_norm:PostNormVisionTower",
    "siglip2_naflex": "hooked_vlm.components.naflex_vision:NaFlexVisionTower",
    "tiled_vit": "hooked_vlm.components.tiled_vision:TiledVisionTower",
    "gemma4_vit": "hooked_vlm.components.gemma4_vision:Gemma4VisionTower",
    "hunyuan_vit": "hooked_vlm.components.hunyuan_vision:GridPositionViT",
    "sam_vit": "hooked_vlm.components.sam_vision:SamVisionTower",
    "hybrid_vit": "hooked_vlm.components.hybrid_vision:HybridVisionTower",
    "vit_rope2d": "hooked_vlm.components.rope2d_vision:Rope2DVisionTower",
}
PROJECTOR_KINDS = {
    "mlp": "hooked_vlm.components.projector:MLPProjector",
    "patch_merger": "hooked_vlm.components.patch_merger:PatchMerger",
    "deepstack_patch_merger": "hooked_vlm.components.deepstack:DeepStackMerger",
    "glm4v_merger": "hooked_vlm.components.glm4v_merger:Glm4vMerger",
    "pixel_shuffle": "hooked_vlm.components.pixel_shuffle:PixelShuffleProjector",
    "anyres_mlp": "hooked_vlm.components.anyres_projector:AnyresProjector",
    "unfold_merge_mlp": "hooked_vlm.components.patch_merger_projector:PatchMergerProjector",
    "pooled_norm_matmul": "hooked_vlm.components.pooled_projector:PooledNormProjector",
    "linear": "hooked_vlm.components.linear_projector:LinearProjector",
    "unit_norm_linear": "hooked_vlm.components.gemma4_vision:UnitNormLinearProjector",
    "perceiver_resampler": "hooked_vlm.components.perceiver_resampler:PerceiverResamplerProjector",
    "pixel_unshuffle_mlp": "hooked_vlm.components.pixel_unshuffle_projector:PixelUnshuffleProjector",
    "visual_embedding_table": "hooked_vlm.components.visual_embedding_projector:VisualEmbeddingProjector",
    "conv_merger": "hooked_vlm.components.conv_merger:ConvMerger",
    "hybrid_aligner": "hooked_vlm.components.hybrid_aligner:HybridAligner",
    "conv_downsample": "hooked_vlm.components.conv_projector:ConvDownsampleProjector",
    "attention_pool": "hooked_vlm.components.attention_pool:AttentionPoolProjector",
}


def _build(table: dict[str, str], what: str, cfg: Any) -> nn.Module:
    if cfg.kind not in table:
        raise ValueError(f"unknown {what} kind {cfg.kind!r}; known: {', '.join(sorted(table))}")
    module, cls = table[cfg.kind].split(":")
    return getattr(importlib.import_module(module), cls)(cfg)


def build_vision(cfg: Any) -> nn.Module | None:
    return None if cfg is None else _build(VISION_KINDS, "vision tower", cfg)


def build_projector(cfg: Any) -> nn.Module | None:
    return None if cfg is None else _build(PROJECTOR_KINDS, "projector", cfg)
