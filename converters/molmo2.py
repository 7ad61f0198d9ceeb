"""Molmo2ForConditionalGeneration (allenai/Molmo2-4B, -8B, -O-7B): Molmo 2 ViT -> attention-pooling adapter -> Molmo 2 LM.

A declaration of parts (converters/_molmo2_parts.py, registered in converters/parts.py as ``molmo2_text`` /
``molmo2_vision``) plus what the VLM itself does:
- the tower's layers ``adapter_config.vision_feature_layer`` concatenated (HF: ``hidden_states[l + 1]`` for l >= 0);
- the ``attention_pool`` projector (components/attention_pool.py; HF Molmo2Adapter): one attention per image token
  over the patch window ``image_token_pooling`` names, its query the window's mean, then a gated MLP;
- the image features are ADDED to the ``<im_patch>`` token embeddings (``image_splice="add"``);
- one bidirectional attention block over every position ``mm_token_type_ids`` marks (image tokens and markers of all
  the item's images; ``mask_policy="marked_block"``), on the prefill only, as HF;
- the pipeline ``pooled_windows`` (hooked_vlm/pipelines/pooled_windows.py): spans (image, tile, row, col) on the
  low-res grid (tile 0, span ``low_res``) and the high-res grid (tile 1); ``<im_col>`` is ``row_break``, ``<im_start>``
  / ``<im_end>`` are ``boi`` / ``eoi``, ``<low_res_im_start>`` is ``low_res_boi``.

Video (``pixel_values_videos``, frames through the low-res path) is refused with a reason: the video processor needs
torchvision (not installed here), so its frame layout could not be checked against HF's.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from hooked_vlm.config import HookedVLMConfig, TokenRoles

from ._molmo2_parts import patch_linear_to_conv, swap_halves
from .base import Converter, KeyMap, UnsupportedConfigError, check_fields
from .parts import LM_PARTS, TOWER_PARTS, lm_part, projector_part, tower_part

TOP_FIELDS = {"image_start_token_id", "low_res_image_start_token_id", "image_end_token_id", "image_patch_id",
              "frame_start_token_id", "frame_end_token_id", "tie_word_embeddings", "image_col_id"}
_TOKEN_COPY = "a token id the remote-code release kept in the model config; HF's Molmo2 model never reads it"
TOP_IGNORED = {
    "auto_map": "the remote-code classes of the first release; transformers' own Molmo2 classes load it",
    "image_high_res_id": _TOKEN_COPY + " (it equals image_patch_id in the released configs)",
    "image_low_res_id": _TOKEN_COPY,
    "use_frame_special_tokens": "a processor setting (frame markers of videos) copied into the model config",
}
ADAPTER_FIELDS = {"vision_feature_layer", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                  "attention_bias", "hidden_act", "intermediate_size", "text_hidden_size", "mlp_bias"}
_DROPOUT = "a dropout rate (training only)"
ADAPTER_IGNORED = {"residual_dropout": _DROPOUT, "image_feature_dropout": _DROPOUT,
                   "float32_attention": "a key of the remote-code release; HF's Molmo2 attention never reads it",
                   "pooling_attention_mask": "a key of the remote-code release; HF's Molmo2Adapter always masks the "
                                             "empty window slots and never reads it"}
VIDEO_REFUSED = ("Molmo 2 video input (frames through the low-res path, <frame_start> / <frame_end> markers) is not "
                 "converted: its video processor needs torchvision, so the frame layout could not be checked against "
                 "HF's; pass images")


def molmo2_config(hf: Any) -> HookedVLMConfig:
    name = type(hf).__name__
    check_fields(hf, TOP_FIELDS, name, TOP_IGNORED)
    tc, vc, ac = hf.text_config, hf.vision_config, hf.adapter_config
    check_fields(ac, ADAPTER_FIELDS, "adapter_config (molmo2_adapter)", ADAPTER_IGNORED)
    if hf.tie_word_embeddings or tc.tie_word_embeddings:
        raise UnsupportedConfigError(f"{name}: tie_word_embeddings=True: the embedding table has additional_vocab_size "
                                     "more rows than lm_head, and tying them is not implemented")
    if ac.hidden_size != vc.hidden_size or ac.text_hidden_size != tc.hidden_size:
        raise UnsupportedConfigError(
            f"{name}: adapter_config.hidden_size={ac.hidden_size} / text_hidden_size={ac.text_hidden_size} must equal "
            f"vision_config.hidden_size={vc.hidden_size} / text_config.hidden_size={tc.hidden_size}: HF's adapter reads "
            "the tower's features at its own hidden_size and writes the LM's width")
    n_vit = vc.num_hidden_layers
    for layer in ac.vision_feature_layer:
        if not -n_vit <= layer < n_vit:
            raise UnsupportedConfigError(f"{name}: adapter_config.vision_feature_layer {layer} does not index the "
                                         f"{n_vit} tower layers")
    hidden = tuple(layer + 1 if layer >= 0 else layer for layer in ac.vision_feature_layer)  # HF's hidden_states index
    vision = tower_part(vc, ("molmo2_vision",), name).config(vc, hidden, "full")
    text = dataclasses.replace(lm_part(tc, ("molmo2_text",), name).config(tc), mask_policy="marked_block",
                               mask_policy_input="mm_token_type_ids")
    projector = projector_part("attention_pool").config(vc.hidden_size * len(hidden), tc.hidden_size, {
        "act_fn": ac.hidden_act, "n_heads": ac.num_attention_heads, "n_key_value_heads": ac.num_key_value_heads,
        "d_head": ac.head_dim, "d_pool": ac.hidden_size, "d_hidden": ac.intermediate_size,
        "attn_bias": bool(ac.attention_bias), "mlp_bias": bool(ac.mlp_bias)})
    col = getattr(hf, "image_col_id", None)
    return HookedVLMConfig(
        architecture="Molmo2ForConditionalGeneration", text=text, d_vocab=tc.vocab_size,
        d_vocab_embed=tc.vocab_size + tc.additional_vocab_size, vision=vision, projector=projector,
        roles=TokenRoles(image_token_id=hf.image_patch_id, boi_token_id=hf.image_start_token_id,
                         eoi_token_id=hf.image_end_token_id, row_break_token_ids=() if col is None else (int(col),),
                         pad_token_id=getattr(tc, "pad_token_id", None), bos_token_id=getattr(tc, "bos_token_id", None),
                         eos_token_id=getattr(tc, "eos_token_id", None),
                         extra={"low_res_boi": (hf.low_res_image_start_token_id,)}),
        image_splice="add",
        extra={"image_pipeline": "pooled_windows", "parts": {"tower": vc.model_type, "projector": "attention_pool",
                                                             "lm": tc.model_type},
               "input_keys": ("image_token_pooling", "image_grids", "image_num_crops", "mm_token_type_ids"),
               "refused_inputs": {k: VIDEO_REFUSED for k in ("pixel_values_videos", "video_token_pooling",
                                                             "video_grids")}},
    )


def molmo2_finalize(cfg: HookedVLMConfig, processor: Any) -> None:
    """``<im_col>`` (span row_break) from the tokenizer when the config does not name it (HF's configs do not)."""
    tok = getattr(processor, "tokenizer", None) or (processor if hasattr(processor, "get_vocab") else None)
    if tok is None or cfg.roles.row_break_token_ids:
        return
    vocab = tok.get_vocab()
    if "<im_col>" in vocab:
        cfg.roles.row_break_token_ids = (vocab["<im_col>"],)


# the original (hub, save_pretrained) layout -> the in-memory one, where it is a plain rename
ALIASES = [
    (r"^model\.transformer\.blocks\.(\d+)\.attn_norm\.", r"model.language_model.layers.\1.input_layernorm."),
    (r"^model\.transformer\.blocks\.(\d+)\.ff_norm\.", r"model.language_model.layers.\1.post_attention_layernorm."),
    (r"^model\.transformer\.blocks\.(\d+)\.self_attn\.attn_out\.", r"model.language_model.layers.\1.self_attn.o_proj."),
    (r"^model\.transformer\.blocks\.(\d+)\.mlp\.ff_out\.", r"model.language_model.layers.\1.mlp.down_proj."),
    (r"^model\.transformer\.blocks\.", "model.language_model.layers."),
    (r"^model\.transformer\.ln_f\.", "model.language_model.norm."),
    (r"^model\.vision_backbone\.image_vit\.transformer\.resblocks\.(\d+)\.attention\.w(q|k|v|o)\.",
     r"model.vision_tower.layers.\1.self_attn.\2_proj."),
    (r"^model\.vision_backbone\.image_vit\.transformer\.resblocks\.(\d+)\.attention_norm\.",
     r"model.vision_tower.layers.\1.layer_norm1."),
    (r"^model\.vision_backbone\.image_vit\.transformer\.resblocks\.(\d+)\.ffn_norm\.",
     r"model.vision_tower.layers.\1.layer_norm2."),
    (r"^model\.vision_backbone\.image_vit\.transformer\.resblocks\.(\d+)\.feed_forward\.w(1|2)\.",
     r"model.vision_tower.layers.\1.mlp.fc\2."),
    (r"^model\.vision_backbone\.image_vit\.", "model.vision_tower."),
    (r"^model\.vision_backbone\.image_pooling_2d\.w(q|k|v|o)\.", r"model.multi_modal_projector.image_pooling_2d.\1_proj."),
    (r"^model\.vision_backbone\.image_projector\.w1\.", "model.multi_modal_projector.image_projector.gate_proj."),
    (r"^model\.vision_backbone\.image_projector\.w2\.", "model.multi_modal_projector.image_projector.down_proj."),
    (r"^model\.vision_backbone\.image_projector\.w3\.", "model.multi_modal_projector.image_projector.up_proj."),
]


def molmo2_keymap(cfg: HookedVLMConfig) -> KeyMap:
    parts_of = cfg.extra["parts"]
    lm, tower = "model.language_model", "model.vision_tower"
    t, vcfg = cfg.text, cfg.vision
    q, kv, n_embed = t.n_heads * t.d_head, t.n_key_value_heads * t.d_head, cfg.d_vocab_embed
    rows = {"q": slice(0, q), "k": slice(q, q + kv), "v": slice(q + kv, q + 2 * kv),
            "gate": slice(0, t.d_mlp), "up": slice(t.d_mlp, 2 * t.d_mlp)}
    layer = rf"{re.escape(lm)}\.layers\.(\d+)"
    return KeyMap(
        aliases=ALIASES,
        rules=LM_PARTS[parts_of["lm"]].rules(lm) + TOWER_PARTS[parts_of["tower"]].rules(tower)
        + projector_part(parts_of["projector"]).rules("model.multi_modal_projector"),
        parts=[  # the in-memory layout's split tensors, into our fused ones
            (rf"{layer}\.self_attn\.(q|k|v)_proj\.(weight|bias)", r"blocks.\1.attn.qkv.\3", lambda m: (rows[m[2]],)),
            (rf"{layer}\.mlp\.(gate|up)_proj\.weight", r"blocks.\1.mlp.gate_up_proj.weight", lambda m: (rows[m[2]],))],
        # the original embedding is two tables (the base vocabulary, then additional_vocab_size rows), concatenated by
        # HF on load; save_pretrained writes them back split in two equal halves: rows from the front / the end
        sized_parts=[
            (r"model\.transformer\.wte\.embedding", "embed.weight", lambda m, shape: (slice(0, shape[0]),)),
            (r"model\.transformer\.wte\.new_embedding", "embed.weight",
             lambda m, shape: (slice(n_embed - shape[0], n_embed),))],
        transforms=[(r"blocks\.\d+\.mlp\.gate_up_proj\.weight", swap_halves),
                    (r"vision\.patch_embed\.weight", patch_linear_to_conv(vcfg.patch_size, vcfg.n_channels))],
    )


CONVERTER = Converter(architectures=("Molmo2ForConditionalGeneration",), make_config=molmo2_config,
                      make_keymap=molmo2_keymap, finalize=molmo2_finalize)
