"""Qwen2VLForConditionalGeneration and Qwen2_5_VLForConditionalGeneration.

Vision: native-resolution ViT over packed patches (fused qkv, 2-D axial rotary; Qwen2-VL: LayerNorm
+ quick-GELU MLP; Qwen2.5-VL: RMSNorm + SwiGLU MLP and window attention outside
``fullatt_block_indexes``), then the patch merger (2x2 patches -> one LM token). LM: Qwen2 with
M-RoPE (3-D positions computed from input_ids + image_grid_thw, hooked_vlm.positions "mrope").
Widths: Qwen2-VL's vision ``embed_dim`` is the ViT width and ``hidden_size`` the merger output;
Qwen2.5-VL uses ``hidden_size`` (ViT) and ``out_hidden_size`` (merger output).
"""

from __future__ import annotations

import re
from typing import Any

from hooked_vlm.config import HookedVLMConfig, ProjectorConfig, TokenRoles, TowerConfig, VisionConfig

from ._decoder import check_rope_type, decoder_rules, refuse_layer_windows, uniform_full_attention
from ._qwen_inputs import load_qwen_inputs
from .base import Converter, KeyMap, UnsupportedConfigError, check_copy, check_fields

# vision_token_id appears in hub configs but no HF code reads it
TOP_FIELDS = {"image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id", "tie_word_embeddings",
              "vision_token_id"}
TOP_IGNORED = {  # hub configs are flat: HF moves only the text config's own fields (and rope ones) into text_config
    "head_dim": "in a flat config head_dim is no Qwen2(.5)-VL text-config field, so HF leaves it at the top level, "
                "where no code reads it (the text model uses hidden_size // num_attention_heads)",
}
TEXT_FIELDS = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_parameters",
               "use_sliding_window", "sliding_window", "max_window_layers", "layer_types", "tie_word_embeddings"}
VISION_FIELDS = {
    "qwen2_vl_vision": {"depth", "embed_dim", "hidden_size", "hidden_act", "mlp_ratio", "num_heads", "in_channels",
                        "patch_size", "spatial_merge_size", "temporal_patch_size", "rope_parameters"},
    # tokens_per_second only spaces video frames in time; images are unaffected
    "qwen2_5_vl_vision": {"depth", "hidden_size", "hidden_act", "intermediate_size", "num_heads", "in_channels",
                          "patch_size", "spatial_merge_size", "temporal_patch_size", "tokens_per_second",
                          "window_size", "out_hidden_size", "fullatt_block_indexes", "rope_parameters"},
    # EXAONE 4.5: the Qwen2.5-VL ViT with grouped key / value heads in its fused qkv (no tokens_per_second)
    "exaone4_5_vision": {"depth", "hidden_size", "hidden_act", "intermediate_size", "num_heads", "num_key_value_heads",
                         "in_channels", "patch_size", "spatial_merge_size", "temporal_patch_size", "window_size",
                         "out_hidden_size", "fullatt_block_indexes", "rope_parameters"},
}
LEGACY_VISION_ALIASES = {"in_chans": "in_channels", "spatial_patch_size": "patch_size"}

# save_pretrained writes model.layers.* / visual.*; the in-memory layout is model.language_model.* / model.visual.*
ALIASES = [
    (r"^model\.(layers|embed_tokens|norm)\.", r"model.language_model.\1."),
    (r"^visual\.", "model.visual."),
]


def text_config(tc: Any) -> TowerConfig:
    where = f"text_config ({tc.model_type})"
    check_fields(tc, TEXT_FIELDS, where)
    rope = dict(tc.rope_parameters or {"rope_type": "default", "rope_theta": 10000.0})
    check_rope_type(rope, where)
    # HF's Qwen2(.5)-VL text attention always uses hidden_size // num_attention_heads; only its rotary reads head_dim
    d_head = tc.hidden_size // tc.num_attention_heads
    if getattr(tc, "head_dim", None) not in (None, d_head):
        raise UnsupportedConfigError(
            f"{where}: head_dim={tc.head_dim} differs from hidden_size // num_attention_heads = {d_head}. HF's "
            f"{tc.model_type} attention splits q/k/v into {d_head}-wide heads while its rotary embedding is "
            f"{tc.head_dim} wide, so HF's own forward cannot run this config")
    rope.setdefault("mrope_section", [16, 24, 24])  # HF's default
    if sum(rope["mrope_section"]) != d_head // 2:
        raise UnsupportedConfigError(
            f"{where}: rope_parameters.mrope_section={rope['mrope_section']} does not sum to head_dim // 2 = "
            f"{d_head // 2}: M-RoPE gives each of its (t, h, w) sections that many rotary frequencies of a "
            f"{d_head}-wide head, so HF's own forward cannot run this config")
    if not uniform_full_attention(tc):
        refuse_layer_windows(tc, where)
    return TowerConfig(
        n_layers=tc.num_hidden_layers, d_model=tc.hidden_size, n_heads=tc.num_attention_heads,
        n_key_value_heads=tc.num_key_value_heads, d_head=d_head, d_mlp=tc.intermediate_size, act_fn=tc.hidden_act,
        gated_mlp=True, normalization_type="RMS", norm_eps=tc.rms_norm_eps, attn_bias=True, attn_out_bias=False,
        mlp_bias=False, causal=True, positional="rope", rope_parameters=rope,
        max_position_embeddings=tc.max_position_embeddings,
    )


def vision_config(vc: Any, ignored: dict[str, str] | None = None) -> tuple[VisionConfig, ProjectorConfig]:
    """``ignored``: more fields (-> reason) the family's HF model never reads."""
    if vc.model_type not in VISION_FIELDS:
        raise UnsupportedConfigError(f"vision model type {vc.model_type!r}; supported: {', '.join(VISION_FIELDS)}")
    check_fields(vc, VISION_FIELDS[vc.model_type] | set(LEGACY_VISION_ALIASES), f"vision_config ({vc.model_type})",
                 ignored)
    for legacy, field in LEGACY_VISION_ALIASES.items():  # hub configs repeat these; HF reads only the new name
        if getattr(vc, legacy, None) not in (None, getattr(vc, field)):
            check_copy(vc, legacy, getattr(vc, field), field, f"vision_config ({vc.model_type})")
    rope = dict(vc.rope_parameters or {"rope_type": "axial", "rope_theta": 10000.0})
    if rope.get("rope_type", "axial") != "axial":
        raise UnsupportedConfigError(
            f"vision_config ({vc.model_type}): rope_parameters.rope_type={rope.get('rope_type')!r}; supported: 'axial' "
            "(the 2-D rotary over patch rows and columns the vision tower implements)")
    qwen25 = vc.model_type in ("qwen2_5_vl_vision", "exaone4_5_vision")
    width = vc.hidden_size if qwen25 else vc.embed_dim
    tower = TowerConfig(
        n_layers=vc.depth, d_model=width, n_heads=vc.num_heads, n_key_value_heads=getattr(vc, "num_key_value_heads", None),
        d_mlp=vc.intermediate_size if qwen25 else int(vc.embed_dim * vc.mlp_ratio), act_fn=vc.hidden_act,
        gated_mlp=qwen25, normalization_type="RMS" if qwen25 else "LN", norm_eps=1e-6, attn_bias=True,
        attn_out_bias=True, mlp_bias=True, causal=False, positional="rope",
    )
    extra = {"temporal_patch_size": vc.temporal_patch_size, "spatial_merge_size": vc.spatial_merge_size,
             "rope_theta": float(rope.get("rope_theta", 10000.0))}
    if qwen25:
        extra.update(window_size=vc.window_size, fullatt_block_indexes=list(vc.fullatt_block_indexes))
    vision = VisionConfig(tower=tower, image_size=0, patch_size=vc.patch_size, kind="qwen_vit", n_channels=vc.in_channels,
                          class_token=False, patch_bias=False, ln_pre=False, feature_layers=(-1,), extra=extra)
    projector = ProjectorConfig(d_in=width, d_out=vc.out_hidden_size if qwen25 else vc.hidden_size, act_fn="gelu",
                                bias=True, kind="patch_merger",
                                extra={"spatial_merge_size": vc.spatial_merge_size, "norm": "RMS" if qwen25 else "LN",
                                       "norm_eps": 1e-6})
    return vision, projector


def qwen_vl_config(hf: Any) -> HookedVLMConfig:
    check_fields(hf, TOP_FIELDS, type(hf).__name__, TOP_IGNORED)
    tc = hf.text_config
    text = text_config(tc)
    vision, projector = vision_config(hf.vision_config)
    if projector.d_out != text.d_model:
        raise UnsupportedConfigError(
            f"vision_config: the merger outputs {projector.d_out} features (Qwen2-VL hidden_size / Qwen2.5-VL "
            f"out_hidden_size) but the LM width is text hidden_size={text.d_model}: HF's model could not add them")
    return HookedVLMConfig(
        architecture=hf.architectures[0] if getattr(hf, "architectures", None) else "Qwen2VLForConditionalGeneration",
        text=text, d_vocab=tc.vocab_size, vision=vision, projector=projector,
        roles=TokenRoles(image_token_id=hf.image_token_id, boi_token_id=hf.vision_start_token_id,
                         eoi_token_id=hf.vision_end_token_id, pad_token_id=getattr(tc, "pad_token_id", None),
                         bos_token_id=getattr(tc, "bos_token_id", None), eos_token_id=getattr(tc, "eos_token_id", None)),
        tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False) or getattr(tc, "tie_word_embeddings", False)),
        extra={"image_pipeline": "qwen_vl", "input_keys": ("image_grid_thw", "mm_token_type_ids"),
               "position_fn": "mrope",
               "mrope": {"image_token_id": hf.image_token_id, "video_token_id": hf.video_token_id,
                         "spatial_merge_size": hf.vision_config.spatial_merge_size}},
    )


def vision_rules(prefix: str, gated: bool) -> list[tuple[str, str]]:
    p = re.escape(prefix)
    b = rf"{p}\.blocks\.(\d+)"
    mlp = ([(rf"{b}\.mlp\.(gate|up|down)_proj\.(weight|bias)", r"vision.blocks.\1.mlp.\2_proj.\3")] if gated else
           [(rf"{b}\.mlp\.fc1\.(weight|bias)", r"vision.blocks.\1.mlp.up_proj.\2"),
            (rf"{b}\.mlp\.fc2\.(weight|bias)", r"vision.blocks.\1.mlp.down_proj.\2")])
    return mlp + [
        (rf"{p}\.patch_embed\.proj\.weight", "vision.patch_embed.weight"),
        (rf"{b}\.norm1\.weight", r"vision.blocks.\1.ln1.w"),
        (rf"{b}\.norm1\.bias", r"vision.blocks.\1.ln1.b"),
        (rf"{b}\.norm2\.weight", r"vision.blocks.\1.ln2.w"),
        (rf"{b}\.norm2\.bias", r"vision.blocks.\1.ln2.b"),
        (rf"{b}\.attn\.qkv\.(weight|bias)", r"vision.blocks.\1.attn.qkv.\2"),
        (rf"{b}\.attn\.proj\.(weight|bias)", r"vision.blocks.\1.attn.o_proj.\2"),
        (rf"{p}\.merger\.ln_q\.weight", "projector.ln_q.w"),
        (rf"{p}\.merger\.ln_q\.bias", "projector.ln_q.b"),
        (rf"{p}\.merger\.mlp\.0\.(weight|bias)", r"projector.linear_1.\1"),
        (rf"{p}\.merger\.mlp\.2\.(weight|bias)", r"projector.linear_2.\1"),
    ]


def qwen_vl_keymap(cfg: HookedVLMConfig) -> KeyMap:
    return KeyMap(aliases=ALIASES,
                  rules=decoder_rules("model.language_model") + vision_rules("model.visual", cfg.vision.tower.gated_mlp))


CONVERTER = Converter(
    architectures=("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration"),
    make_config=qwen_vl_config,
    make_keymap=qwen_vl_keymap,
    load_processor=load_qwen_inputs,
)
