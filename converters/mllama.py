"""MllamaForConditionalGeneration (Llama 3.2 Vision): a tiled two-stage ViT, a linear projector, and a Llama LM whose
``cross_attention_layers`` read the image through gated cross-attention (the image never enters the text stream).

Declared as config fields: the LM's ``layer_types`` ("cross_attention" at cross_attention_layers, "full_attention"
elsewhere), ``TowerConfig.cross_attention`` (heads, RMS q/k norms, HF's full-text-row rule), ``tanh_gated_layers``
(the cross-attention layers' attn / mlp gates); the tower ``kind="tiled_vit"`` (components/tiled_vision.py) with
its global encoder's gates; ``d_vocab_embed`` = vocab + 8 (the image placeholder is embedded, never predicted).
"""

from __future__ import annotations

from typing import Any

from hooked_vlm.config import CrossAttentionConfig, HookedVLMConfig, ProjectorConfig, TokenRoles, TowerConfig, VisionConfig

from ._decoder import check_rope_type
from .base import Converter, KeyMap, UnsupportedConfigError, check_fields

MLLAMA_FIELDS = {"image_token_index", "image_token_id"}
TEXT_FIELDS = {"vocab_size", "hidden_size", "hidden_act", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "intermediate_size", "rope_parameters", "rms_norm_eps",
               "max_position_embeddings", "cross_attention_layers"}
#: HF's MllamaForConditionalGeneration declares no tied weights (its _tied_weights_keys is commented out), so
#: lm_head and embed_tokens are separate tensors whatever a config says
_NO_TIE = {"tie_word_embeddings": "HF's Mllama models declare no tied weights (MllamaForConditionalGeneration's "
                                  "_tied_weights_keys is commented out): lm_head is always its own tensor"}
VISION_FIELDS = {"hidden_size", "hidden_act", "num_hidden_layers", "num_global_layers", "attention_heads",
                 "num_attention_heads", "num_channels", "intermediate_size", "vision_output_dim", "image_size",
                 "patch_size", "norm_eps", "max_num_tiles", "intermediate_layers_indices", "supported_aspect_ratios"}
#: extra rows of MllamaTextModel.embed_tokens beyond vocab_size (HF hard-codes vocab_size + 8)
EMBED_EXTRA_ROWS = 8

ALIASES = [  # save_pretrained's legacy layout -> the in-memory one
    (r"^language_model\.model\.", "model.language_model."),
    (r"^language_model\.lm_head\.", "lm_head."),
    (r"^vision_model\.", "model.vision_model."),
    (r"^multi_modal_projector\.", "model.multi_modal_projector."),
]


def mllama_text_config(tc: Any) -> TowerConfig:
    check_fields(tc, TEXT_FIELDS, "text_config (mllama_text_model)", ignored=_NO_TIE)
    rope = dict(tc.rope_parameters or {"rope_type": "default", "rope_theta": 500000.0})
    check_rope_type(rope, "text_config (mllama_text_model)")
    cross = tuple(sorted(set(tc.cross_attention_layers)))
    if any(not 0 <= l < tc.num_hidden_layers for l in cross):
        raise UnsupportedConfigError(f"text_config: cross_attention_layers {list(cross)} must be layers of the "
                                     f"{tc.num_hidden_layers}-layer model")
    d_head = tc.hidden_size // tc.num_attention_heads  # HF's Mllama attention: no head_dim field
    return TowerConfig(
        n_layers=tc.num_hidden_layers, d_model=tc.hidden_size, n_heads=tc.num_attention_heads,
        n_key_value_heads=tc.num_key_value_heads, d_head=d_head, d_mlp=tc.intermediate_size, act_fn=tc.hidden_act,
        gated_mlp=True, normalization_type="RMS", norm_eps=tc.rms_norm_eps, positional="rope", rope_parameters=rope,
        max_position_embeddings=tc.max_position_embeddings,
        layer_types=tuple("cross_attention" if l in cross else "full_attention" for l in range(tc.num_hidden_layers)),
        cross_attention=CrossAttentionConfig(n_heads=tc.num_attention_heads, n_key_value_heads=tc.num_key_value_heads,
                                             d_head=d_head, qk_norm="RMS", qk_norm_eps=tc.rms_norm_eps,
                                             empty_rows_attend_all=True),
        tanh_gated_layers=cross,
    )


def mllama_vision_config(vc: Any) -> VisionConfig:
    check_fields(vc, VISION_FIELDS, "vision_config (mllama_vision_model)", ignored=_NO_TIE)
    layers = tuple(vc.intermediate_layers_indices)
    if any(not -vc.num_hidden_layers <= i < vc.num_hidden_layers for i in layers):
        raise UnsupportedConfigError(f"vision_config: intermediate_layers_indices {list(layers)} must index the "
                                     f"{vc.num_hidden_layers} local layers")
    if vc.vision_output_dim != vc.hidden_size * (len(layers) + 1):
        raise UnsupportedConfigError(f"vision_config: vision_output_dim={vc.vision_output_dim} must be hidden_size * "
                                     f"(len(intermediate_layers_indices) + 1) = {vc.hidden_size * (len(layers) + 1)}: "
                                     "HF's projector would not accept the tower's output")
    tower = TowerConfig(n_layers=vc.num_hidden_layers, d_model=vc.hidden_size, n_heads=vc.attention_heads,
                        d_mlp=vc.intermediate_size, act_fn=vc.hidden_act, gated_mlp=False, normalization_type="LN",
                        norm_eps=vc.norm_eps, attn_bias=False, attn_out_bias=False, mlp_bias=True, causal=False,
                        positional="none")
    return VisionConfig(tower=tower, image_size=vc.image_size, patch_size=vc.patch_size, kind="tiled_vit",
                        n_channels=vc.num_channels, class_token=True, patch_bias=False, ln_pre=True,
                        feature_layers=layers, feature_select="full",
                        extra={"global_layers": vc.num_global_layers, "max_num_tiles": vc.max_num_tiles,
                               "max_aspect_ratio_id": len(vc.supported_aspect_ratios),
                               "supported_aspect_ratios": [list(r) for r in vc.supported_aspect_ratios],
                               "ln_eps": 1e-5})  # HF's layernorm_pre / layernorm_post: nn.LayerNorm's default eps


def mllama_config(hf: Any) -> HookedVLMConfig:
    check_fields(hf, MLLAMA_FIELDS, "MllamaConfig", ignored=_NO_TIE)
    tc, vc = hf.text_config, hf.vision_config
    text = mllama_text_config(tc)
    vision = mllama_vision_config(vc)
    return HookedVLMConfig(
        architecture="MllamaForConditionalGeneration", text=text, d_vocab=tc.vocab_size,
        d_vocab_embed=tc.vocab_size + EMBED_EXTRA_ROWS, vision=vision,
        projector=ProjectorConfig(d_in=vc.vision_output_dim, d_out=tc.hidden_size, bias=True, kind="linear"),
        roles=TokenRoles(image_token_id=hf.image_token_id, pad_token_id=tc.pad_token_id, bos_token_id=tc.bos_token_id,
                         eos_token_id=tc.eos_token_id),
        tie_word_embeddings=False,  # _NO_TIE
        extra={"image_pipeline": "cross_attention_tiles",
               "input_keys": ("aspect_ratio_ids", "aspect_ratio_mask", "cross_attention_mask")},
    )


def mllama_keymap(cfg: HookedVLMConfig) -> KeyMap:
    t, v = r"model\.language_model", r"model\.vision_model"
    rules = [
        (rf"{t}\.embed_tokens\.weight", "embed.weight"),
        (rf"{t}\.layers\.(\d+)\.self_attn\.(q|k|v|o)_proj\.weight", r"blocks.\1.attn.\2_proj.weight"),
        (rf"{t}\.layers\.(\d+)\.cross_attn\.(q|k|v|o)_proj\.weight", r"blocks.\1.cross_attn.\2_proj.weight"),
        (rf"{t}\.layers\.(\d+)\.cross_attn\.(q|k)_norm\.weight", r"blocks.\1.cross_attn.\2_norm.w"),
        (rf"{t}\.layers\.(\d+)\.cross_attn_(attn|mlp)_gate", r"blocks.\1.\2_gate"),
        (rf"{t}\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight", r"blocks.\1.mlp.\2_proj.weight"),
        (rf"{t}\.layers\.(\d+)\.input_layernorm\.weight", r"blocks.\1.ln1.w"),
        (rf"{t}\.layers\.(\d+)\.post_attention_layernorm\.weight", r"blocks.\1.ln2.w"),
        (rf"{t}\.norm\.weight", "ln_final.w"),
        (r"lm_head\.weight", "unembed.weight"),
        (r"model\.multi_modal_projector\.(weight|bias)", r"projector.linear.\1"),
        (rf"{v}\.patch_embedding\.weight", "vision.patch_embed.weight"),
        (rf"{v}\.class_embedding", "vision.class_embedding"),
        (rf"{v}\.gated_positional_embedding\.(embedding|gate)", r"vision.positions.\1"),
        (rf"{v}\.gated_positional_embedding\.tile_embedding\.weight", "vision.positions.tile_embedding.weight"),
        (rf"{v}\.(pre|post)_tile_positional_embedding\.embedding\.weight", r"vision.\1_tile.embedding.weight"),
        (rf"{v}\.(pre|post)_tile_positional_embedding\.gate", r"vision.\1_tile.gate"),
        (rf"{v}\.layernorm_(pre|post)\.weight", r"vision.ln_\1.w"),
        (rf"{v}\.layernorm_(pre|post)\.bias", r"vision.ln_\1.b"),
    ]
    for hf_name, ours in (("transformer", "blocks"), ("global_transformer", "global_blocks")):
        layer = rf"{v}\.{hf_name}\.layers\.(\d+)"
        rules += [
            (rf"{layer}\.self_attn\.(q|k|v|o)_proj\.weight", rf"vision.{ours}.\1.attn.\2_proj.weight"),
            (rf"{layer}\.mlp\.fc1\.(weight|bias)", rf"vision.{ours}.\1.mlp.up_proj.\2"),
            (rf"{layer}\.mlp\.fc2\.(weight|bias)", rf"vision.{ours}.\1.mlp.down_proj.\2"),
            (rf"{layer}\.input_layernorm\.weight", rf"vision.{ours}.\1.ln1.w"),
            (rf"{layer}\.input_layernorm\.bias", rf"vision.{ours}.\1.ln1.b"),
            (rf"{layer}\.post_attention_layernorm\.weight", rf"vision.{ours}.\1.ln2.w"),
            (rf"{layer}\.post_attention_layernorm\.bias", rf"vision.{ours}.\1.ln2.b"),
            (rf"{layer}\.gate_attn", rf"vision.{ours}.\1.attn_gate"),
            (rf"{layer}\.gate_ffn", rf"vision.{ours}.\1.mlp_gate"),
        ]
    return KeyMap(aliases=ALIASES, rules=rules)


CONVERTER = Converter(architectures=("MllamaForConditionalGeneration",), make_config=mllama_config,
                      make_keymap=mllama_keymap)
