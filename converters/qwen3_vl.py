"""Qwen3VLForConditionalGeneration and Qwen3VLMoeForConditionalGeneration (images; videos are refused).

Vision: the Qwen2-VL packed-patch ViT (LayerNorm, GELU-tanh MLP, fused qkv with bias, 2-D axial rotary) plus a
learned position embedding resized bilinearly to each image's grid; the patch merger maps the last layer to LM tokens
and one more merger per ``deepstack_visual_indexes`` layer makes the DeepStack features, added to the image positions
of LM blocks 0 .. n-1 (``blocks.{l}.hook_deepstack``). LM: Qwen3 (per-head RMS q/k norm, ``head_dim`` independent of
the width) with interleaved M-RoPE (HF's Qwen3-VL text rotary always interleaves the t/h/w frequency pairs).
Qwen3-VL-MoE: the same, with top-k routed experts (``mlp_kind="moe"``, components/moe.py) in every layer that is not in
``mlp_only_layers`` and whose ``layer + 1`` is a multiple of ``decoder_sparse_step`` (HF's rule).
"""

from __future__ import annotations

import re
from typing import Any

from hooked_vlm.config import HookedVLMConfig, ProjectorConfig, TokenRoles, TowerConfig, VisionConfig

from ._decoder import check_rope_type
from ._qwen_inputs import load_qwen_inputs
from .base import Converter, KeyMap, UnsupportedConfigError, check_fields

TOP_FIELDS = {"image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id", "tie_word_embeddings"}
TEXT_FIELDS = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
               "rope_parameters", "attention_bias", "tie_word_embeddings"}
MOE_TEXT_FIELDS = {"decoder_sparse_step", "moe_intermediate_size", "num_experts_per_tok", "num_local_experts",
                   "mlp_only_layers"}  # num_experts is an alias of num_local_experts
MOE_IGNORED = {"output_router_logits": "returns the router logits / adds the auxiliary loss: training outputs only",
               "router_aux_loss_coef": "weight of the load-balancing loss, used in training only"}
# norm_topk_prob is no Qwen3VLMoeTextConfig field (hub configs carry it): HF's router always renormalises the top-k
MOE_PINNED = {"norm_topk_prob": (True, "HF's Qwen3-VL-MoE router always renormalises the top-k weights to sum to 1")}
VISION_FIELDS = {"depth", "hidden_size", "hidden_act", "intermediate_size", "num_heads", "in_channels", "patch_size",
                 "spatial_merge_size", "temporal_patch_size", "out_hidden_size", "num_position_embeddings",
                 "deepstack_visual_indexes", "rope_parameters"}
HF_MROPE_SECTION = [24, 20, 20]  # Qwen3VLTextRotaryEmbedding's default



def check_merger_width(projector: Any, text: Any) -> None:
    """The packed-ViT merger must write the LM's width (Qwen3-VL, Qwen3.5, GLM-4.xV): HF splices its output as is."""
    if projector.d_out != text.d_model:
        raise UnsupportedConfigError(
            f"vision_config.out_hidden_size={projector.d_out} differs from text hidden_size={text.d_model}: HF's "
            "model could not splice the merger output into the LM")

def text_config(tc: Any, n_deepstack: int) -> TowerConfig:
    where = f"text_config ({tc.model_type})"
    moe = hasattr(tc, "num_experts")
    if moe:
        check_fields(tc, TEXT_FIELDS | MOE_TEXT_FIELDS, where, MOE_IGNORED, MOE_PINNED)
    else:
        check_fields(tc, TEXT_FIELDS, where)
    rope = dict(tc.rope_parameters or {"rope_type": "default", "rope_theta": 10000.0})
    check_rope_type(rope, where)
    d_head = tc.head_dim or tc.hidden_size // tc.num_attention_heads
    rope.setdefault("mrope_section", list(HF_MROPE_SECTION))
    # HF's Qwen3-VL rotary interleaves whatever mrope_interleaved says (it never reads the flag)
    rope["mrope_interleaved"] = True
    section = list(rope["mrope_section"])
    if len(section) != 3 or sum(section) != d_head // 2:
        raise UnsupportedConfigError(
            f"{where}: rope_parameters.mrope_section={section} must have 3 entries summing to head_dim // 2 = "
            f"{d_head // 2}: interleaved M-RoPE gives each (t, h, w) axis that many of the {d_head // 2} frequency pairs")
    if n_deepstack > tc.num_hidden_layers:
        raise UnsupportedConfigError(
            f"{where}: {n_deepstack} deepstack_visual_indexes for {tc.num_hidden_layers} LM layers: HF adds DeepStack "
            "feature i after LM layer i, so the levels beyond the last layer would be dropped")
    return TowerConfig(
        n_layers=tc.num_hidden_layers, d_model=tc.hidden_size, n_heads=tc.num_attention_heads,
        n_key_value_heads=tc.num_key_value_heads, d_head=d_head, d_mlp=tc.intermediate_size, act_fn=tc.hidden_act,
        gated_mlp=True, normalization_type="RMS", norm_eps=tc.rms_norm_eps, attn_bias=bool(tc.attention_bias),
        attn_out_bias=bool(tc.attention_bias), mlp_bias=False, causal=True, positional="rope", rope_parameters=rope,
        max_position_embeddings=tc.max_position_embeddings, qk_norm="RMS", deepstack_layers=n_deepstack,
        **(moe_fields(tc) if moe else {}),
    )


def moe_fields(tc: Any) -> dict[str, Any]:
    """TowerConfig MoE fields; HF: layer l is sparse iff l not in mlp_only_layers and (l + 1) % decoder_sparse_step == 0."""
    only = set(tc.mlp_only_layers or [])
    layers = tuple(l for l in range(tc.num_hidden_layers)
                   if tc.num_experts > 0 and l not in only and (l + 1) % tc.decoder_sparse_step == 0)
    if not layers:
        return {}
    return dict(mlp_kind="moe", n_experts=tc.num_experts, n_experts_per_tok=tc.num_experts_per_tok,
                d_mlp_expert=tc.moe_intermediate_size, moe_layers=layers)


def vision_config(vc: Any) -> tuple[VisionConfig, ProjectorConfig]:
    where = f"vision_config ({vc.model_type})"
    check_fields(vc, VISION_FIELDS, where)
    rope = dict(vc.rope_parameters or {"rope_type": "axial", "rope_theta": 10000.0})
    if rope.get("rope_type", "axial") != "axial":
        raise UnsupportedConfigError(f"{where}: rope_parameters.rope_type={rope.get('rope_type')!r}; supported: "
                                     "'axial' (the 2-D rotary over patch rows and columns)")
    indexes = list(getattr(vc, "deepstack_visual_indexes", None) or [])  # Qwen3.5: no such field (no DeepStack)
    if indexes != sorted(set(indexes)) or any(not 0 <= i < vc.depth for i in indexes):
        raise UnsupportedConfigError(f"{where}: deepstack_visual_indexes={indexes} must be increasing blocks of the "
                                     f"{vc.depth}-block tower")
    tower = TowerConfig(n_layers=vc.depth, d_model=vc.hidden_size, n_heads=vc.num_heads, d_mlp=vc.intermediate_size,
                        act_fn=vc.hidden_act, gated_mlp=False, normalization_type="LN", norm_eps=1e-6, attn_bias=True,
                        attn_out_bias=True, mlp_bias=True, causal=False, positional="rope")
    extra = {"temporal_patch_size": vc.temporal_patch_size, "spatial_merge_size": vc.spatial_merge_size,
             "rope_theta": float(rope.get("rope_theta", 10000.0)),
             "num_position_embeddings": vc.num_position_embeddings, "deepstack_visual_indexes": indexes}
    vision = VisionConfig(tower=tower, image_size=0, patch_size=vc.patch_size, kind="qwen3_vit",
                          n_channels=vc.in_channels, class_token=False, patch_bias=True, ln_pre=False,
                          feature_layers=(-1,), extra=extra)
    projector = ProjectorConfig(d_in=vc.hidden_size, d_out=vc.out_hidden_size, act_fn="gelu", bias=True,
                                kind="deepstack_patch_merger",
                                extra={"spatial_merge_size": vc.spatial_merge_size, "norm": "LN", "norm_eps": 1e-6,
                                       "n_deepstack": len(indexes)})
    return vision, projector


def qwen3_vl_config(hf: Any, make_text: Any = None) -> HookedVLMConfig:
    """``make_text``: (HF text config) -> TowerConfig for a family that shares this one's vision tower, inputs and
    top-level fields (Qwen3.5); default: the Qwen3-VL LM, with DeepStack."""
    check_fields(hf, TOP_FIELDS, type(hf).__name__)
    tc = hf.text_config
    vision, projector = vision_config(hf.vision_config)
    text = text_config(tc, projector.extra["n_deepstack"]) if make_text is None else make_text(tc)
    check_merger_width(projector, text)
    return HookedVLMConfig(
        architecture=hf.architectures[0] if getattr(hf, "architectures", None) else "Qwen3VLForConditionalGeneration",
        text=text, d_vocab=tc.vocab_size, vision=vision, projector=projector,
        roles=TokenRoles(image_token_id=hf.image_token_id, boi_token_id=hf.vision_start_token_id,
                         eoi_token_id=hf.vision_end_token_id, pad_token_id=getattr(tc, "pad_token_id", None),
                         bos_token_id=getattr(tc, "bos_token_id", None), eos_token_id=getattr(tc, "eos_token_id", None)),
        tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
        extra={"image_pipeline": "qwen3_vl", "input_keys": ("image_grid_thw", "mm_token_type_ids"),
               "refused_inputs": {"pixel_values_videos": VIDEO_REFUSAL, "video_grid_thw": VIDEO_REFUSAL},
               "position_fn": "mrope",
               "mrope": {"image_token_id": hf.image_token_id, "video_token_id": hf.video_token_id,
                         "spatial_merge_size": hf.vision_config.spatial_merge_size}},
    )


VIDEO_REFUSAL = ("video inputs are not supported for Qwen3-VL (images only): pass images as pixel_values + "
                 "image_grid_thw, or extract frames and pass them as images")


def vision_rules(prefix: str) -> list[tuple[str, str]]:
    p = re.escape(prefix)
    b = rf"{p}\.blocks\.(\d+)"
    return [
        (rf"{p}\.patch_embed\.proj\.(weight|bias)", r"vision.patch_embed.\1"),
        (rf"{p}\.pos_embed\.weight", "vision.pos_embed.weight"),
        (rf"{b}\.norm1\.weight", r"vision.blocks.\1.ln1.w"),
        (rf"{b}\.norm1\.bias", r"vision.blocks.\1.ln1.b"),
        (rf"{b}\.norm2\.weight", r"vision.blocks.\1.ln2.w"),
        (rf"{b}\.norm2\.bias", r"vision.blocks.\1.ln2.b"),
        (rf"{b}\.attn\.qkv\.(weight|bias)", r"vision.blocks.\1.attn.qkv.\2"),
        (rf"{b}\.attn\.proj\.(weight|bias)", r"vision.blocks.\1.attn.o_proj.\2"),
        (rf"{b}\.mlp\.linear_fc1\.(weight|bias)", r"vision.blocks.\1.mlp.up_proj.\2"),
        (rf"{b}\.mlp\.linear_fc2\.(weight|bias)", r"vision.blocks.\1.mlp.down_proj.\2"),
        (rf"{p}\.merger\.norm\.weight", "projector.ln_q.w"),
        (rf"{p}\.merger\.norm\.bias", "projector.ln_q.b"),
        (rf"{p}\.merger\.linear_fc(1|2)\.(weight|bias)", r"projector.linear_\1.\2"),
        (rf"{p}\.deepstack_merger_list\.(\d+)\.norm\.weight", r"projector.deepstack.\1.ln_q.w"),
        (rf"{p}\.deepstack_merger_list\.(\d+)\.norm\.bias", r"projector.deepstack.\1.ln_q.b"),
        (rf"{p}\.deepstack_merger_list\.(\d+)\.linear_fc(1|2)\.(weight|bias)", r"projector.deepstack.\1.linear_\2.\3"),
    ]


def text_rules(prefix: str) -> list[tuple[str, str]]:
    from ._decoder import decoder_rules

    p = re.escape(prefix)
    return decoder_rules(prefix) + [
        (rf"{p}\.layers\.(\d+)\.self_attn\.(q|k)_norm\.weight", r"blocks.\1.attn.\2_norm.w"),
        (rf"{p}\.layers\.(\d+)\.mlp\.gate\.weight", r"blocks.\1.mlp.router.weight"),  # MoE layers
        (rf"{p}\.layers\.(\d+)\.mlp\.experts\.(gate_up|down)_proj", r"blocks.\1.mlp.\2_proj"),
    ]


# older checkpoints (and transformers 4.x save_pretrained) write model.layers.* / visual.*
ALIASES = [
    (r"^model\.(layers|embed_tokens|norm)\.", r"model.language_model.\1."),
    (r"^visual\.", "model.visual."),
]


def qwen3_vl_keymap(cfg: HookedVLMConfig) -> KeyMap:
    return KeyMap(aliases=ALIASES, rules=text_rules("model.language_model") + vision_rules("model.visual"))


CONVERTER = Converter(
    architectures=("Qwen3VLForConditionalGeneration", "Qwen3VLMoeForConditionalGeneration"),
    make_config=qwen3_vl_config,
    make_keymap=qwen3_vl_keymap,
    load_processor=load_qwen_inputs,
)
