"""Gemma3ForConditionalGeneration (google/gemma-3-4b/12b/27b-it): SigLIP tower + pooled projector + Gemma 3 LM.

Gemma's differences are config fields of the shared components: RMSNorm with ``(1 + w)`` in float32
(``norm_offset``), sandwich norms (``norm_placement="sandwich"``: ln1, ln1_post, ln2, ln2_post), embeddings scaled
by sqrt(d_model) (``embed_scale``), RMS q/k norms over d_head, sliding / full layers with their own RoPE tables
(``layer_types`` + ``layer_rope_parameters``), attention scale ``query_pre_attn_scalar ** -0.5``, and the
bidirectional attention within each image (``mask_policy``), switched on by ``token_type_ids`` as in HF.
Refused (they change the numbers and are not implemented): attention / final logit soft-capping (null in every
Gemma 3 config), ``use_bidirectional_attention`` (EmbeddingGemma), an image token id outside the vocabulary.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from hooked_vlm.components.rope import STATIC_ROPE_TYPES
from hooked_vlm.config import HookedVLMConfig, ProjectorConfig, TokenRoles, TowerConfig, VisionConfig

from ._siglip import siglip_ignored, siglip_last_hidden_config, siglip_rules
from ._vit import post_layernorm_rules
from .base import Converter, KeyMap, UnsupportedConfigError, check_fields

GEMMA3_FIELDS = {"mm_tokens_per_image", "boi_token_index", "eoi_token_index", "image_token_index", "tie_word_embeddings"}
GEMMA3_TEXT_FIELDS = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                      "num_key_value_heads", "head_dim", "hidden_activation", "max_position_embeddings", "rms_norm_eps",
                      "tie_word_embeddings", "rope_parameters", "attention_bias", "query_pre_attn_scalar",
                      "sliding_window", "layer_types", "sliding_window_pattern", "_sliding_window_pattern",  # read via layer_types
                      "final_logit_softcapping", "attn_logit_softcapping", "use_bidirectional_attention"}  # checked below

# save_pretrained writes the legacy layout; the in-memory (and newer hub) layout is under "model."
GEMMA3_ALIASES = [
    (r"^language_model\.model\.", "model.language_model."),
    (r"^language_model\.lm_head\.", "lm_head."),
    (r"^vision_tower\.", "model.vision_tower."),
    (r"^multi_modal_projector\.", "model.multi_modal_projector."),
]
BOI, EOI = "<start_of_image>", "<end_of_image>"


def gemma3_text_config(tc: Any) -> TowerConfig:
    check_fields(tc, GEMMA3_TEXT_FIELDS, "text_config (gemma3_text)")
    for name in ("final_logit_softcapping", "attn_logit_softcapping"):
        if getattr(tc, name, None) is not None:
            raise UnsupportedConfigError(f"text_config.{name}={getattr(tc, name)!r}: tanh soft-capping is not "
                                         "implemented (Gemma 3 checkpoints set it to null)")
    if getattr(tc, "use_bidirectional_attention", False):
        raise UnsupportedConfigError("text_config.use_bidirectional_attention=True (EmbeddingGemma) is not supported")
    rope = {kind: dict(params) for kind, params in (tc.rope_parameters or {}).items()}
    layer_types = tuple(tc.layer_types)
    for kind in sorted(set(layer_types)):
        params = rope.get(kind)
        if params is None or params.get("rope_type", "default") not in STATIC_ROPE_TYPES:
            raise UnsupportedConfigError(f"rope_parameters[{kind!r}]={params!r}; supported rope types: {STATIC_ROPE_TYPES}")
    return TowerConfig(
        n_layers=tc.num_hidden_layers, d_model=tc.hidden_size, n_heads=tc.num_attention_heads,
        n_key_value_heads=tc.num_key_value_heads, d_head=tc.head_dim, d_mlp=tc.intermediate_size,
        act_fn=tc.hidden_activation, gated_mlp=True, normalization_type="RMS", norm_eps=tc.rms_norm_eps,
        attn_bias=bool(tc.attention_bias), attn_out_bias=bool(tc.attention_bias), causal=True, positional="rope",
        rope_parameters=rope["full_attention"] if "full_attention" in rope else next(iter(rope.values())),
        max_position_embeddings=tc.max_position_embeddings, attn_scale=float(tc.query_pre_attn_scalar) ** -0.5,
        sliding_window=tc.sliding_window if "sliding_attention" in layer_types else None, qk_norm="RMS",
        norm_placement="sandwich", norm_offset=1.0, embed_scale=float(tc.hidden_size) ** 0.5,
        layer_types=layer_types, layer_rope_parameters={kind: rope[kind] for kind in set(layer_types)},
        mask_policy="causal+image_bidirectional", mask_policy_input="token_type_ids",
    )


def gemma3_vision_config(vc: Any) -> VisionConfig:
    if vc.model_type != "siglip_vision_model":
        raise UnsupportedConfigError(f"Gemma 3 with a {vc.model_type!r} vision tower; supported: siglip_vision_model")
    # Gemma 3 reads SigLIP's last_hidden_state, which is AFTER post_layernorm (the pooling head is never used)
    return siglip_last_hidden_config(vc)


def gemma3_config(hf: Any) -> HookedVLMConfig:
    check_fields(hf, GEMMA3_FIELDS, "Gemma3Config")
    tc, vc = hf.text_config, hf.vision_config
    text, vision = gemma3_text_config(tc), gemma3_vision_config(vc)
    side = int(round(hf.mm_tokens_per_image ** 0.5))
    if side * side != hf.mm_tokens_per_image or vision.grid_size % side:
        raise UnsupportedConfigError(f"mm_tokens_per_image={hf.mm_tokens_per_image} must be a square whose side divides "
                                     f"the {vision.grid_size}x{vision.grid_size} patch grid (it is average-pooled)")
    if not 0 <= hf.image_token_index < tc.vocab_size:
        raise UnsupportedConfigError(f"image_token_index={hf.image_token_index} outside the vocabulary ({tc.vocab_size}) "
                                     "is not supported")
    eos = hf.eos_token_id if getattr(hf, "eos_token_id", None) is not None else tc.eos_token_id
    projector = ProjectorConfig(d_in=vc.hidden_size, d_out=tc.hidden_size, bias=False, kind="pooled_norm_matmul",
                                extra={"patches_per_side": vision.grid_size, "tokens_per_side": side,
                                       "norm_eps": vc.layer_norm_eps, "norm_offset": 1.0})
    return HookedVLMConfig(
        architecture="Gemma3ForConditionalGeneration",
        text=text,
        d_vocab=tc.vocab_size,
        vision=vision,
        projector=projector,
        roles=TokenRoles(image_token_id=hf.image_token_index, boi_token_id=hf.boi_token_index,
                         eoi_token_id=hf.eoi_token_index, pad_token_id=tc.pad_token_id, bos_token_id=tc.bos_token_id,
                         eos_token_id=eos),
        tie_word_embeddings=bool(hf.tie_word_embeddings),  # HF ties from the top-level config
        extra={"image_pipeline": "vit_pooled", "prepare_inputs_fn": gemma3_prepare_inputs, "input_keys": ("token_type_ids", "num_crops"), "image_markers": ("boi", "eoi"),
               "marker_names": {"boi": BOI, "eoi": EOI}},
    )


def gemma3_prepare_inputs(model: Any, images: Any = None, text: list[str] | None = None, **kwargs: Any) -> Any:
    """Gemma3Processor wants one list of images per prompt; ``model.prepare_inputs`` takes one flat list (one image
    per ``<start_of_image>`` placeholder, in order): split it by the placeholders of each prompt."""
    processor = model.processor
    if images is not None and not any(isinstance(i, (list, tuple)) for i in images):
        counts = [prompt.count(processor.boi_token) for prompt in text]
        if sum(counts) != len(images):
            raise ValueError(f"the prompts hold {sum(counts)} {processor.boi_token} placeholders ({counts} per prompt) "
                             f"but {len(images)} images were given; give one image per placeholder, in order")
        starts = [sum(counts[:i]) for i in range(len(counts))]
        images = [list(images[s:s + c]) for s, c in zip(starts, counts)]
    out = processor(images=images, text=text, return_tensors="pt", **kwargs)
    if images is not None:  # the processor drops num_crops (HF's forward ignores it): spans label the crops with it
        is_pan = lambda k: k.startswith(("do_pan_and_scan", "pan_and_scan_"))  # noqa: E731
        # HF's precedence: the processor's defaults, the image processor's saved (non-null) settings, the call's kwargs
        defaults = getattr(processor, "images_kwargs", None)
        if not isinstance(defaults, dict):  # transformers < 5.23 keeps them on the processor's kwargs class
            defaults = getattr(getattr(processor, "valid_processor_kwargs", None), "_defaults", {}).get("images_kwargs", {})
        pan = {k: v for k, v in defaults.items() if is_pan(k)}
        pan.update({k: getattr(processor.image_processor, k) for k in list(pan)
                    if getattr(processor.image_processor, k, None) is not None})
        pan.update({k: v for k, v in kwargs.items() if is_pan(k)})
        flat = [image for group in images for image in (group if isinstance(group, (list, tuple)) else [group])]
        out["num_crops"] = torch.as_tensor(processor.image_processor(flat, **pan)["num_crops"])
    return out


def gemma3_keymap(cfg: HookedVLMConfig) -> KeyMap:
    lm, vt = "model.language_model", "model.vision_tower"
    p = re.escape(lm)
    layer = rf"{p}\.layers\.(\d+)"
    norms = {"input_layernorm": "ln1", "post_attention_layernorm": "ln1_post", "pre_feedforward_layernorm": "ln2",
             "post_feedforward_layernorm": "ln2_post"}
    rules = [
        (rf"{p}\.embed_tokens\.weight", "embed.weight"),
        (rf"{layer}\.self_attn\.(q|k|v|o)_proj\.(weight|bias)", r"blocks.\1.attn.\2_proj.\3"),
        (rf"{layer}\.self_attn\.(q|k)_norm\.weight", r"blocks.\1.attn.\2_norm.w"),
        (rf"{layer}\.mlp\.(gate|up|down)_proj\.weight", r"blocks.\1.mlp.\2_proj.weight"),
        *[(rf"{layer}\.{hf}\.weight", rf"blocks.\1.{ours}.w") for hf, ours in norms.items()],
        (rf"{p}\.norm\.weight", "ln_final.w"),
        (r"lm_head\.weight", "unembed.weight"),
        (r"model\.multi_modal_projector\.mm_input_projection_weight", "projector.weight"),
        (r"model\.multi_modal_projector\.mm_soft_emb_norm\.weight", "projector.norm.w"),
    ]
    ignored = [(pattern, reason) for pattern, reason in siglip_ignored(vt) if "post_layernorm" not in pattern]
    return KeyMap(aliases=GEMMA3_ALIASES, rules=rules + siglip_rules(vt) + post_layernorm_rules(vt), ignored=ignored)


CONVERTER = Converter(architectures=("Gemma3ForConditionalGeneration",), make_config=gemma3_config,
                      make_keymap=gemma3_keymap)
