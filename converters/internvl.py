"""InternVLForConditionalGeneration (OpenGVLab/InternVL3-*-hf, InternVL3_5-*-HF): InternViT -> pixel shuffle + MLP ->
Qwen2 / Qwen3 LM.

InternViT's differences are config fields of the shared ViT: a class token (dropped before the projector, HF's
"default" strategy), learned positions, biased or unbiased q/k/v (``attention_bias``; the output projection always has
a bias), LayerNorm or RMSNorm blocks (``norm_type``), layer scale (``lambda_1`` / ``lambda_2`` -> ``ls1`` / ``ls2``,
``layer_scale``), and InternViT-6B's RMS q/k norm over all heads together (``use_qk_norm`` -> ``qk_norm_scope="all"``,
eps 1e-6 as HF's InternVLVisionRMSNorm default). The connector is ``pixel_shuffle`` with ``scale = 1 / downsample_ratio``
and a LayerNorm -> Linear -> act -> Linear MLP. Images are dynamic tiles + a thumbnail (pipelines/tiles.py); the
``<img>`` / ``</img>`` ids come from the tokenizer (``boi`` / ``eoi`` spans), not from the config.
Refused (they change the numbers and are not implemented): ``vision_feature_select_strategy="full"`` (HF's reshape of
the class token + patches into a square fails), ``downsample_ratio`` whose inverse is not an integer, ``use_mean_pooling
=False`` together with RMS-norm blocks (HF then puts a LayerNorm on the last layer; LayerNorm towers are supported).
Videos: HF's processor turns each frame into one tile of ``pixel_values`` ("FrameN: <img>...</img>"), so a video
prompt is a prompt of one-tile images here (untested: the video processor needs torchvision).
"""

from __future__ import annotations

import re
from typing import Any

from hooked_vlm.config import HookedVLMConfig, ProjectorConfig, TokenRoles, VisionConfig

from ._internvl_inputs import load_internvl_processor
from ._decoder import decoder_config, decoder_rules, qk_norm_rules
from ._vit import check_feature_layers, vit_tower
from .base import Converter, KeyMap, UnsupportedConfigError, check_fields

TOP_FIELDS = {"image_token_id", "downsample_ratio", "projector_hidden_act", "vision_feature_layer",
              "vision_feature_select_strategy", "tie_word_embeddings"}
TOP_IGNORED = {"image_seq_length": "the processor's tokens-per-tile setting; HF's model derives the tokens of a tile "
                                   "from the patch grid and downsample_ratio (and raises if the prompt disagrees)"}
VISION_FIELDS = {"hidden_size", "num_hidden_layers", "num_attention_heads", "attention_bias", "use_qk_norm",
                 "intermediate_size", "hidden_act", "norm_type", "layer_norm_eps", "image_size", "patch_size",
                 "num_channels", "use_absolute_position_embeddings", "use_mean_pooling", "use_mask_token"}
_DROPOUT = "a dropout probability: dropout is inactive in eval mode, HF's forward in eval never applies it"
VISION_IGNORED = {
    "hidden_dropout_prob": _DROPOUT, "projection_dropout": _DROPOUT,
    "layer_scale_init_value": "the initial value of lambda_1 / lambda_2; the checkpoint's tensors replace it",
    "tie_word_embeddings": "a vision tower has no word embeddings",
}
TEXT_KINDS = ("qwen2", "qwen3")
ALIASES = [  # save_pretrained writes the legacy layout; the in-memory (and hub) layout is under "model."
    (r"^language_model\.model\.", "model.language_model."),
    (r"^language_model\.lm_head\.", "lm_head."),
    (r"^vision_tower\.", "model.vision_tower."),
    (r"^multi_modal_projector\.", "model.multi_modal_projector."),
]
START, END = "<img>", "</img>"


def _pair(value: Any, name: str) -> int:
    a, b = (value, value) if isinstance(value, int) else tuple(value)
    if a != b:
        raise UnsupportedConfigError(f"vision_config.{name}={list(value)!r}: only square {name}s are supported (the "
                                     "processor makes square tiles and the pixel shuffle needs a square patch grid)")
    return int(a)


def vision_config(hf: Any) -> VisionConfig:
    vc = hf.vision_config
    where = f"vision_config ({vc.model_type})"
    check_fields(vc, VISION_FIELDS, where, VISION_IGNORED)
    if vc.norm_type not in ("layer_norm", "rms_norm"):
        raise UnsupportedConfigError(f"{where}: norm_type={vc.norm_type!r}; HF knows 'layer_norm' and 'rms_norm'")
    size, patch = _pair(vc.image_size, "image_size"), _pair(vc.patch_size, "patch_size")
    layers = hf.vision_feature_layer if isinstance(hf.vision_feature_layer, list) else [hf.vision_feature_layer]
    if len(layers) != 1:
        raise UnsupportedConfigError(f"vision_feature_layer={hf.vision_feature_layer!r}: HF's InternVL indexes the "
                                     "hidden states with it, so a list of layers fails there; give one layer")
    check_feature_layers(vc, tuple(layers))
    post_norm = not vc.use_mean_pooling and layers[0] == -1  # HF: last_hidden_state = layernorm(last layer)
    if post_norm and vc.norm_type != "layer_norm":
        raise UnsupportedConfigError(
            f"{where}: use_mean_pooling=False with norm_type={vc.norm_type!r}: HF then applies a LayerNorm to the last "
            "layer's output while the blocks use RMS norms; that mix is not implemented")
    tower = vit_tower(vc, attn_bias=bool(vc.attention_bias))
    tower.normalization_type = "RMS" if vc.norm_type == "rms_norm" else "LN"
    tower.layer_scale = True
    if vc.use_qk_norm:  # InternVLVisionRMSNorm(embed_dim): one RMS norm over all heads, its default eps 1e-6
        tower.qk_norm, tower.qk_norm_scope, tower.qk_norm_eps = "RMS", "all", 1e-6
    tower.positional = "learned" if vc.use_absolute_position_embeddings else "none"
    select = hf.vision_feature_select_strategy
    if select != "default":
        raise UnsupportedConfigError(f"vision_feature_select_strategy={select!r}: HF reshapes the selected features "
                                     "into a square grid, which fails with the class token kept; supported: 'default'")
    return VisionConfig(tower=tower, image_size=size, patch_size=patch, kind="vit_post_norm" if post_norm else "vit",
                        n_channels=vc.num_channels, class_token=True, patch_bias=True, ln_pre=False,
                        feature_layers=tuple(layers), feature_select="default")


def projector_config(hf: Any, vision: VisionConfig, d_model: int) -> ProjectorConfig:
    ratio = float(hf.downsample_ratio)
    scale = round(1 / ratio) if ratio > 0 else 0
    if scale < 1 or abs(scale * ratio - 1) > 1e-9 or vision.grid_size % scale:
        raise UnsupportedConfigError(
            f"downsample_ratio={hf.downsample_ratio!r}: the pixel shuffle folds 1 / downsample_ratio patches per side "
            f"into one token; it must be the inverse of an integer that divides the {vision.grid_size}-patch grid")
    return ProjectorConfig(d_in=vision.tower.d_model, d_out=d_model, act_fn=hf.projector_hidden_act, bias=True,
                           kind="pixel_shuffle", extra={"scale_factor": scale, "mlp": True, "norm_eps": 1e-5})


def internvl_config(hf: Any) -> HookedVLMConfig:
    check_fields(hf, TOP_FIELDS, type(hf).__name__, TOP_IGNORED)
    tc = hf.text_config
    if tc.model_type not in TEXT_KINDS:
        raise UnsupportedConfigError(f"{type(hf).__name__}: text_config.model_type={tc.model_type!r} is a language "
                                     f"model this converter does not build; supported: {', '.join(TEXT_KINDS)}")
    # InternVL3's Qwen2.5 LMs carry rope_scaling {"rope_type": "dynamic", "factor": 2.0}: exact below
    # max_position_embeddings (HF's table only changes beyond it), refused at run time past it
    text = decoder_config(tc, dynamic_rope=True)
    vision = vision_config(hf)
    if not 0 <= hf.image_token_id < tc.vocab_size:
        raise UnsupportedConfigError(f"image_token_id={hf.image_token_id} is outside the vocabulary ({tc.vocab_size})")
    return HookedVLMConfig(
        architecture="InternVLForConditionalGeneration",
        text=text, d_vocab=tc.vocab_size, vision=vision, projector=projector_config(hf, vision, text.d_model),
        roles=TokenRoles(image_token_id=hf.image_token_id, pad_token_id=getattr(tc, "pad_token_id", None),
                         bos_token_id=getattr(tc, "bos_token_id", None), eos_token_id=getattr(tc, "eos_token_id", None)),
        tie_word_embeddings=bool(hf.tie_word_embeddings),  # HF ties from the top-level config
        extra={"image_pipeline": "tiles_pixel_shuffle"},
    )


def internvl_finalize(cfg: HookedVLMConfig, processor: Any) -> None:
    """``<img>`` / ``</img>`` ids from the tokenizer (its start/end_image_token_id; a processor that failed to load:
    its tokenizer, else the tokenizer files read directly): spans ``boi`` / ``eoi`` (none without a tokenizer)."""
    from hooked_vlm.processors import FileVocab, marker_vocab

    vocab = marker_vocab(processor)
    tok = getattr(vocab, "tokenizer", vocab)
    ids = {name: getattr(tok, attr, None) for name, attr in (("boi", "start_image_token_id"), ("eoi", "end_image_token_id"))}
    if isinstance(tok, FileVocab):
        ids = {"boi": tok.convert_tokens_to_ids(START), "eoi": tok.convert_tokens_to_ids(END)}
    if tok is None or None in ids.values():
        return
    cfg.roles.boi_token_id, cfg.roles.eoi_token_id = ids["boi"], ids["eoi"]
    cfg.extra["image_markers"] = ("boi", "eoi")
    cfg.extra["marker_names"] = {"boi": START, "eoi": END}


def internvl_keymap(cfg: HookedVLMConfig) -> KeyMap:
    lm, vt = "model.language_model", re.escape("model.vision_tower")
    layer = rf"{vt}\.encoder\.layer\.(\d+)"
    mp = re.escape("model.multi_modal_projector")
    rules = decoder_rules(lm) + qk_norm_rules(lm) + [
        (rf"{vt}\.embeddings\.cls_token", "vision.class_embedding"),
        (rf"{vt}\.embeddings\.position_embeddings", "vision.pos_embed"),
        (rf"{vt}\.embeddings\.patch_embeddings\.projection\.(weight|bias)", r"vision.patch_embed.\1"),
        (rf"{layer}\.attention\.(q|k|v)_proj\.(weight|bias)", r"vision.blocks.\1.attn.\2_proj.\3"),
        (rf"{layer}\.attention\.projection_layer\.(weight|bias)", r"vision.blocks.\1.attn.o_proj.\2"),
        (rf"{layer}\.attention\.(q|k)_norm\.weight", r"vision.blocks.\1.attn.\2_norm.w"),
        (rf"{layer}\.layernorm_before\.weight", r"vision.blocks.\1.ln1.w"),
        (rf"{layer}\.layernorm_before\.bias", r"vision.blocks.\1.ln1.b"),
        (rf"{layer}\.layernorm_after\.weight", r"vision.blocks.\1.ln2.w"),
        (rf"{layer}\.layernorm_after\.bias", r"vision.blocks.\1.ln2.b"),
        (rf"{layer}\.lambda_(1|2)", r"vision.blocks.\1.ls\2"),
        (rf"{layer}\.mlp\.fc1\.(weight|bias)", r"vision.blocks.\1.mlp.up_proj.\2"),
        (rf"{layer}\.mlp\.fc2\.(weight|bias)", r"vision.blocks.\1.mlp.down_proj.\2"),
        (rf"{mp}\.layer_norm\.weight", "projector.ln.w"),
        (rf"{mp}\.layer_norm\.bias", "projector.ln.b"),
        (rf"{mp}\.linear_(1|2)\.(weight|bias)", r"projector.linear_\1.\2"),
    ]
    if cfg.vision.kind == "vit_post_norm":
        rules += [(rf"{vt}\.layernorm\.weight", "vision.ln_post.w"), (rf"{vt}\.layernorm\.bias", "vision.ln_post.b")]
    ignored = [
        (rf"{vt}\.embeddings\.mask_token", "the masked-image-modelling token replaces patches only when "
                                           "bool_masked_pos is given, which the VLM forward never passes"),
        (rf"{vt}\.layernorm\.(weight|bias)", "with vision_feature_layer != -1 HF reads hidden_states[layer], which "
                                              "are taken before this final LayerNorm"),
    ]
    transforms = [  # HF keeps a leading batch axis: cls_token [1, 1, d], position_embeddings [1, n_patches + 1, d]
        (r"vision\.class_embedding", lambda t: t.reshape(t.shape[-1])),
        (r"vision\.pos_embed", lambda t: t.reshape(t.shape[-2], t.shape[-1])),
    ]
    return KeyMap(aliases=ALIASES, rules=rules, ignored=ignored, transforms=transforms)


CONVERTER = Converter(architectures=("InternVLForConditionalGeneration",), make_config=internvl_config,
                      make_keymap=internvl_keymap, load_processor=load_internvl_processor, finalize=internvl_finalize)
