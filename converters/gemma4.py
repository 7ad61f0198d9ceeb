"""Gemma4ForConditionalGeneration (google/gemma-4-*): the Gemma 4 language model.

Gemma 4's parts are config fields of the shared components (docs/architecture.md section 4): plain RMSNorm weights
(no Gemma 3 ``1 +``), sandwich norms, embeddings times sqrt(d_model), RMS q / k norms and a weightless value norm
(``v_norm``), attention scale 1.0, sliding / full layers with their own RoPE tables (proportional partial RoPE on the
full layers, ``rope.py``), full layers with their own head size and KV heads (``layer_d_head``,
``layer_n_key_value_heads``) and values equal to keys (``k_eq_v_layer_types``, ``attention_k_eq_v``), per-layer
inputs (PLE: ``d_per_layer_input``), KV sharing of the last ``num_kv_shared_layers`` layers (``kv_shared_layers``)
with their double-wide MLP (``kv_shared_mlp_factor``), a stored scalar per layer (``layer_scalar``), the MoE block
beside the dense MLP (``moe_beside_dense`` with a norm-scale router, ``router_norm_scale``), and the final logit
soft-cap.

Not implemented (refused by name): the ``gemma4_vision`` image tower and the audio tower (so ``vision_config`` /
``audio_config`` must be null: the text model of a Gemma4ForConditionalGeneration checkpoint), bidirectional attention (``use_bidirectional_attention``, which only acts on
image / "all" inputs).
"""

from __future__ import annotations

import re
from typing import Any

from hooked_vlm.components.rope import STATIC_ROPE_TYPES
from hooked_vlm.config import HookedVLMConfig, ProjectorConfig, TokenRoles, TowerConfig, VisionConfig

from .base import Converter, KeyMap, UnsupportedConfigError, check_fields

GEMMA4_FIELDS = {"text_config", "vision_config", "audio_config", "image_token_id", "boi_token_id", "eoi_token_id",
                 "video_token_id", "boa_token_id", "eoa_token_index", "audio_token_id", "tie_word_embeddings",
                 "initializer_range"}
GEMMA4_TEXT_FIELDS = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                      "num_key_value_heads", "head_dim", "hidden_activation", "max_position_embeddings", "rms_norm_eps",
                      "tie_word_embeddings", "rope_parameters", "attention_bias", "sliding_window", "layer_types",
                      "final_logit_softcapping", "vocab_size_per_layer_input", "hidden_size_per_layer_input",
                      "attention_k_eq_v", "num_kv_shared_layers", "use_double_wide_mlp", "per_layer_config",
                      "global_head_dim", "num_global_key_value_heads",
                      # checked below
                      "use_bidirectional_attention", "enable_moe_block", "num_experts", "top_k_experts",
                      "moe_intermediate_size"}
GEMMA4_VISION_FIELDS = {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                        "num_key_value_heads", "head_dim", "global_head_dim", "hidden_activation", "rms_norm_eps",
                        "max_position_embeddings", "attention_bias", "rope_parameters", "pooling_kernel_size",
                        "patch_size", "position_embedding_size", "standardize",
                        "use_clipped_linears"}  # checked below
GEMMA4_IGNORED = {"vision_soft_tokens_per_image": "the image processor's soft-token budget; the model reads the "
                                                  "patches it is given",
                  "eoa_token_id": "audio (not converted)"}
GEMMA4_VISION_IGNORED = {"default_output_length": "the processor's default soft-token budget",
                         "attention_dropout": "dropout, off in eval", "initializer_range": "initialisation only"}
GEMMA4_TEXT_IGNORED = {"attention_dropout": "dropout, off in eval", "initializer_range": "initialisation only"}


def _per_kind(tc: Any, name: str, layer_types: tuple[str, ...]) -> dict[str, int]:
    """{kind: value} of a per-layer-config field (HF's ``per_layer_config``: overrides per layer index); one value per
    kind, or the converter refuses."""
    out: dict[str, set] = {}
    for l, kind in enumerate(layer_types):
        out.setdefault(kind, set()).add(getattr(tc.per_layer_config[l], name))
    for kind, values in out.items():
        if len(values) != 1:
            raise UnsupportedConfigError(f"text_config: the {kind} layers have different {name} {sorted(values)}")
    return {kind: values.pop() for kind, values in out.items()}


def gemma4_text_config(tc: Any) -> TowerConfig:
    check_fields(tc, GEMMA4_TEXT_FIELDS, "text_config (gemma4_text)", ignored=GEMMA4_TEXT_IGNORED)
    moe = bool(getattr(tc, "enable_moe_block", False))
    if moe and not (tc.num_experts and tc.top_k_experts and tc.moe_intermediate_size):
        raise UnsupportedConfigError("text_config.enable_moe_block=True needs num_experts, top_k_experts and "
                                     f"moe_intermediate_size; got {tc.num_experts}, {tc.top_k_experts}, "
                                     f"{tc.moe_intermediate_size}")
    bidirectional = getattr(tc, "use_bidirectional_attention", None)
    if bidirectional not in (None, "vision"):
        raise UnsupportedConfigError(f"text_config.use_bidirectional_attention={bidirectional!r} (every token "
                                     "bidirectional) is not implemented; None and 'vision' are")
    layer_types = tuple(tc.layer_types)
    rope = {kind: dict(params) for kind, params in (tc.rope_parameters or {}).items()}
    for kind in sorted(set(layer_types)):
        params = rope.get(kind)
        if params is None or params.get("rope_type", "default") not in STATIC_ROPE_TYPES:
            raise UnsupportedConfigError(f"text_config.rope_parameters[{kind!r}]={params!r}; supported rope types: "
                                         f"{STATIC_ROPE_TYPES}")
    d_head = _per_kind(tc, "head_dim", layer_types)
    kv_heads = _per_kind(tc, "num_key_value_heads", layer_types)
    d_ple = int(tc.hidden_size_per_layer_input or 0)
    base = layer_types[0]  # the other kinds' head sizes / KV heads are per-kind overrides
    return TowerConfig(
        n_layers=tc.num_hidden_layers, d_model=tc.hidden_size, n_heads=tc.num_attention_heads,
        n_key_value_heads=kv_heads[base], d_head=d_head[base], d_mlp=tc.intermediate_size,
        act_fn=tc.hidden_activation, gated_mlp=True, normalization_type="RMS", norm_eps=tc.rms_norm_eps,
        attn_bias=bool(tc.attention_bias), attn_out_bias=bool(tc.attention_bias), causal=True, positional="rope",
        rope_parameters=rope.get("full_attention", next(iter(rope.values()))),
        max_position_embeddings=tc.max_position_embeddings, attn_scale=1.0,
        sliding_window=tc.sliding_window if "sliding_attention" in layer_types else None, qk_norm="RMS",
        norm_placement="sandwich", embed_scale=float(tc.hidden_size) ** 0.5,
        layer_types=layer_types, layer_rope_parameters={kind: rope[kind] for kind in set(layer_types)},
        final_logit_softcap=tc.final_logit_softcapping,
        layer_d_head=d_head, layer_n_key_value_heads=kv_heads,
        k_eq_v_layer_types=("full_attention",) if tc.attention_k_eq_v else (), v_norm=True,
        kv_shared_layers=int(tc.num_kv_shared_layers or 0),
        kv_shared_mlp_factor=2 if tc.use_double_wide_mlp else 1,
        d_per_layer_input=d_ple, per_layer_vocab=int(tc.vocab_size_per_layer_input) if d_ple else 0,
        layer_scalar=True,
        mlp_kind="moe" if moe else "dense", moe_beside_dense=moe, router_norm_scale=moe,
        n_experts=int(tc.num_experts or 0) if moe else 0, n_experts_per_tok=int(tc.top_k_experts or 0) if moe else 0,
        d_mlp_expert=int(tc.moe_intermediate_size) if moe else None,
        # "vision": the tokens of one image attend to each other on sliding layers (HF's create_masks_for_vision_model:
        # full layers stay causal), when mm_token_type_ids is given
        mask_policy="causal+image_bidirectional" if bidirectional == "vision" else "causal",
        mask_policy_input="mm_token_type_ids" if bidirectional == "vision" else None,
        mask_policy_layer_types=("sliding_attention",) if bidirectional == "vision" else None,
    )


def gemma4_vision_config(vc: Any) -> VisionConfig:
    check_fields(vc, GEMMA4_VISION_FIELDS, "vision_config (gemma4_vision)", ignored=GEMMA4_VISION_IGNORED)
    if vc.use_clipped_linears:
        raise UnsupportedConfigError("vision_config.use_clipped_linears=True (clamped linear inputs / outputs) is not "
                                     "implemented yet")
    rope = dict(vc.rope_parameters or {})
    if rope.get("rope_type", "default") not in ("default", "axial"):
        raise UnsupportedConfigError(f"vision_config.rope_parameters={rope!r}: only the axial 2-D RoPE is supported")
    if vc.head_dim % 4:
        raise UnsupportedConfigError(f"vision_config.head_dim={vc.head_dim} must be a multiple of 4 (2-D RoPE)")
    tower = TowerConfig(
        n_layers=vc.num_hidden_layers, d_model=vc.hidden_size, n_heads=vc.num_attention_heads,
        n_key_value_heads=vc.num_key_value_heads, d_head=vc.head_dim, d_mlp=vc.intermediate_size,
        act_fn=vc.hidden_activation, gated_mlp=True, normalization_type="RMS", norm_eps=vc.rms_norm_eps,
        attn_bias=bool(vc.attention_bias), attn_out_bias=bool(vc.attention_bias), causal=False, positional="rope",
        max_position_embeddings=vc.max_position_embeddings, attn_scale=1.0, qk_norm="RMS", v_norm=True,
        norm_placement="sandwich", rope_axes=2)
    return VisionConfig(tower=tower, image_size=vc.patch_size * vc.position_embedding_size, patch_size=vc.patch_size,
                        kind="gemma4_vit", class_token=False, ln_pre=False, feature_layers=(-1,), feature_select="full",
                        extra={"position_embedding_size": vc.position_embedding_size,
                               "pooling_kernel": vc.pooling_kernel_size, "standardize": bool(vc.standardize),
                               "rope_theta": float(rope.get("rope_theta", 100.0))})


def gemma4_config(hf: Any) -> HookedVLMConfig:
    check_fields(hf, GEMMA4_FIELDS, "Gemma4Config", ignored=GEMMA4_IGNORED)
    if getattr(hf, "audio_config", None) is not None:
        raise UnsupportedConfigError("Gemma4Config.audio_config is set: the audio tower is not implemented (images and "
                                     "text are)")
    tc, vc = hf.text_config, hf.vision_config
    text = gemma4_text_config(tc)
    eos = hf.eos_token_id if getattr(hf, "eos_token_id", None) is not None else tc.eos_token_id
    vision = projector = None
    extra: dict[str, Any] = {}
    if vc is not None:
        vision = gemma4_vision_config(vc)
        projector = ProjectorConfig(d_in=vc.hidden_size, d_out=tc.hidden_size, bias=False, kind="unit_norm_linear",
                                    extra={"norm_eps": vc.rms_norm_eps})
        extra = {"image_pipeline": "gemma4_patches", "input_keys": ("image_position_ids", "mm_token_type_ids"),
                 "image_markers": ("boi", "eoi")}
    elif text.mask_policy != "causal":
        raise UnsupportedConfigError("text_config.use_bidirectional_attention='vision' without a vision_config")
    return HookedVLMConfig(
        architecture="Gemma4ForConditionalGeneration", text=text, d_vocab=tc.vocab_size, vision=vision,
        projector=projector,
        roles=TokenRoles(image_token_id=hf.image_token_id, boi_token_id=hf.boi_token_id, eoi_token_id=hf.eoi_token_id,
                         pad_token_id=tc.pad_token_id, bos_token_id=tc.bos_token_id, eos_token_id=eos),
        tie_word_embeddings=bool(hf.tie_word_embeddings), extra=extra,
    )


def gemma4_keymap(cfg: HookedVLMConfig) -> KeyMap:
    p = re.escape("model.language_model")
    layer = rf"{p}\.layers\.(\d+)"
    norms = {"input_layernorm": "ln1", "post_attention_layernorm": "ln1_post", "pre_feedforward_layernorm": "ln2",
             "post_feedforward_layernorm": "ln2_post", "post_per_layer_input_norm": "ln_ple",
             "post_feedforward_layernorm_1": "ln_mlp_post", "pre_feedforward_layernorm_2": "ln_moe",
             "post_feedforward_layernorm_2": "ln_moe_post"}
    rules = [
        (rf"{p}\.embed_tokens\.weight", "embed.weight"),
        (rf"{p}\.embed_tokens_per_layer\.weight", "per_layer_inputs.embed"),
        (rf"{p}\.per_layer_model_projection\.weight", "per_layer_inputs.proj.weight"),
        (rf"{p}\.per_layer_projection_norm\.weight", "per_layer_inputs.norm.w"),
        (rf"{layer}\.self_attn\.(q|k|v|o)_proj\.(weight|bias)", r"blocks.\1.attn.\2_proj.\3"),
        (rf"{layer}\.self_attn\.(q|k)_norm\.weight", r"blocks.\1.attn.\2_norm.w"),
        (rf"{layer}\.mlp\.(gate|up|down)_proj\.weight", r"blocks.\1.mlp.\2_proj.weight"),
        (rf"{layer}\.per_layer_input_gate\.weight", r"blocks.\1.ple_gate.weight"),
        (rf"{layer}\.per_layer_projection\.weight", r"blocks.\1.ple_proj.weight"),
        (rf"{layer}\.layer_scalar", r"blocks.\1.layer_scalar"),
        (rf"{layer}\.router\.proj\.weight", r"blocks.\1.moe.router.weight"),
        (rf"{layer}\.router\.scale", r"blocks.\1.moe.router_scale"),
        (rf"{layer}\.router\.per_expert_scale", r"blocks.\1.moe.per_expert_scale"),
        (rf"{layer}\.experts\.(gate_up_proj|down_proj)", r"blocks.\1.moe.\2"),
        *[(rf"{layer}\.{hf}\.weight", rf"blocks.\1.{ours}.w") for hf, ours in norms.items()],
        (rf"{p}\.norm\.weight", "ln_final.w"),
        (r"lm_head\.weight", "unembed.weight"),
    ]
    vt = r"model\.vision_tower"
    vlayer = rf"{vt}\.encoder\.layers\.(\d+)"
    vnorms = {k: v for k, v in norms.items() if k in ("input_layernorm", "post_attention_layernorm",
                                                      "pre_feedforward_layernorm", "post_feedforward_layernorm")}
    rules += [
        (rf"{vt}\.patch_embedder\.input_proj\.weight", "vision.patch_embed.weight"),
        (rf"{vt}\.patch_embedder\.position_embedding_table", "vision.position_table"),
        (rf"{vlayer}\.self_attn\.(q|k|v|o)_proj\.linear\.(weight|bias)", r"vision.blocks.\1.attn.\2_proj.\3"),
        (rf"{vlayer}\.self_attn\.(q|k)_norm\.weight", r"vision.blocks.\1.attn.\2_norm.w"),
        (rf"{vlayer}\.mlp\.(gate|up|down)_proj\.linear\.weight", r"vision.blocks.\1.mlp.\2_proj.weight"),
        *[(rf"{vlayer}\.{hf}\.weight", rf"vision.blocks.\1.{ours}.w") for hf, ours in vnorms.items()],
        (rf"{vt}\.std_(bias|scale)", r"vision.std_\1"),
        (r"model\.embed_vision\.embedding_projection\.weight", "projector.linear.weight"),
    ]
    return KeyMap(rules=rules)


CONVERTER = Converter(architectures=("Gemma4ForConditionalGeneration",), make_config=gemma4_config,
                      make_keymap=gemma4_keymap)
