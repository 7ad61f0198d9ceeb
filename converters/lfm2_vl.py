"""Lfm2VlForConditionalGeneration (LiquidAI/LFM2-VL-450M, -1.6B, -3B): SigLIP2 NaFlex tower -> pixel unshuffle +
(LayerNorm) + MLP -> LFM2 LM (short convolutions and GQA attention, hooked_vlm/components/short_conv.py).

Images: the LFM2-VL image processor resizes each image to multiples of patch_size * downsample_factor (a small image
is one tile at its own shape; a large one a grid of 512 px tiles, plus a thumbnail when ``use_thumbnail``) and hands
every tile over as a padded sequence of flattened patches with ``pixel_attention_mask`` and ``spatial_shapes``
(pipeline ``naflex_unshuffle``, hooked_vlm/pipelines/naflex.py). The tower's last hidden state after its
post-layernorm is what the projector reads (HF ``last_hidden_state``). The prompt wraps every image in
``<|image_start|>`` ... ``<|image_end|>`` (spans ``boi`` / ``eoi``) with ``<|img_row_R_col_C|>`` before each tile
(span ``tile_marker``) and ``<|img_thumbnail|>`` before the thumbnail (``thumbnail_marker``): those ids are read from
the checkpoint's tokenizer (``finalize``); without them every run of image tokens counts as one image.

The LFM2-VL processor imports torchvision (transformers 5.23); without it the checkpoint's tokenizer still loads
and ``model(**inputs)`` takes inputs built elsewhere (the processor on a machine with torchvision, or by hand as
tests/tiny_lfm2vl.py does).
"""

from __future__ import annotations

import re
from typing import Any

from hooked_vlm.config import HookedVLMConfig, ProjectorConfig, TokenRoles, VisionConfig

from ._lfm2 import lfm2_config, lfm2_rules
from ._vit import vit_layer_rules, vit_tower
from .base import Converter, KeyMap, UnsupportedConfigError, check_copy, check_fields

TOP_FIELDS = {"image_token_id", "projector_hidden_act", "projector_hidden_size", "projector_bias",
              "projector_use_layernorm", "downsample_factor", "tie_word_embeddings",
              "image_token_index"}  # legacy copy of image_token_id (checked equal)
_PROCESSOR_COPY = ("an image-processor setting copied into the model config; the model never reads it (the "
                   "processor's preprocessor_config.json does the resizing and tiling)")
TOP_IGNORED = {
    **{k: _PROCESSOR_COPY for k in ("do_image_splitting", "encoder_patch_size", "max_image_tokens", "max_num_patches",
                                    "max_pixels_tolerance", "max_tiles", "min_image_tokens", "min_tiles", "tile_size",
                                    "use_image_special_tokens", "use_thumbnail")},
    "auto_map": "the remote-code classes of the checkpoint's first release; transformers' own Lfm2Vl classes are "
                "what loads it (and what this converter follows)",
    "vision_feature_layer": "written by the first (remote-code) release; HF's Lfm2VlModel reads the tower's "
                            "last_hidden_state and never this field",
}
VISION_FIELDS = {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
                 "patch_size", "hidden_act", "layer_norm_eps", "vision_use_head", "num_patches"}
MARKERS = {"boi": "<|image_start|>", "eoi": "<|image_end|>", "thumbnail_marker": "<|img_thumbnail|>"}


def siglip2_naflex_config(vc: Any) -> VisionConfig:
    check_fields(vc, VISION_FIELDS, f"vision_config ({vc.model_type})")
    if not isinstance(vc.patch_size, int):
        raise UnsupportedConfigError(f"vision_config.patch_size={vc.patch_size!r}: only square patches (an int) are "
                                     "implemented; HF's Siglip2 patch embedding reads patch_size as one int")
    side = int(round(vc.num_patches ** 0.5))
    if side * side != vc.num_patches:
        raise UnsupportedConfigError(f"vision_config.num_patches={vc.num_patches} is not a square: HF reshapes the "
                                     "position table into a side x side grid and fails on it")
    return VisionConfig(tower=vit_tower(vc), image_size=side * vc.patch_size, patch_size=vc.patch_size,
                        kind="siglip2_naflex", n_channels=vc.num_channels, class_token=False, patch_bias=True,
                        ln_pre=False, feature_layers=(-1,))


def lfm2_vl_config(hf: Any) -> HookedVLMConfig:
    name = type(hf).__name__
    check_fields(hf, TOP_FIELDS, name, TOP_IGNORED)
    check_copy(hf, "image_token_index", hf.image_token_id, "image_token_id", name)
    vc, tc = hf.vision_config, hf.text_config
    if vc.model_type != "siglip2_vision_model" or tc.model_type != "lfm2":
        raise UnsupportedConfigError(f"{name}: vision_config.model_type={vc.model_type!r} / text_config.model_type="
                                     f"{tc.model_type!r}; this converter builds siglip2_vision_model + lfm2")
    vision, text = siglip2_naflex_config(vc), lfm2_config(tc)
    projector = ProjectorConfig(d_in=vc.hidden_size, d_out=tc.hidden_size, act_fn=hf.projector_hidden_act,
                                bias=bool(hf.projector_bias), kind="pixel_unshuffle_mlp",
                                extra={"factor": hf.downsample_factor, "layer_norm": bool(hf.projector_use_layernorm),
                                       "d_hidden": hf.projector_hidden_size, "norm_eps": 1e-5})  # nn.LayerNorm default
    return HookedVLMConfig(
        architecture="Lfm2VlForConditionalGeneration", text=text, d_vocab=tc.vocab_size, vision=vision,
        projector=projector,
        roles=TokenRoles(image_token_id=hf.image_token_id, pad_token_id=tc.pad_token_id, bos_token_id=tc.bos_token_id,
                         eos_token_id=tc.eos_token_id),
        tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),  # HF ties lm_head on the top-level flag
        extra={"image_pipeline": "naflex_unshuffle", "input_keys": ("pixel_attention_mask", "spatial_shapes")},
    )


def lfm2_vl_finalize(cfg: HookedVLMConfig, processor: Any) -> None:
    """Marker ids from the checkpoint's tokenizer (a loaded processor's, or the stand-in's when the processor needs
    torchvision): ``<|image_start|>`` / ``<|image_end|>`` (spans boi / eoi, and how tiles group into images),
    ``<|img_thumbnail|>``, ``<|img_row_R_col_C|>``. Without a tokenizer nothing is set."""
    tok = getattr(processor, "tokenizer", None) or (processor if hasattr(processor, "get_vocab") else None)
    if tok is None or cfg.roles is None:
        return
    vocab = tok.get_vocab()
    ids = {role: vocab[token] for role, token in MARKERS.items() if token in vocab}
    cfg.roles.boi_token_id, cfg.roles.eoi_token_id = ids.get("boi"), ids.get("eoi")
    if "thumbnail_marker" in ids:
        cfg.roles.extra["thumbnail_marker"] = (ids["thumbnail_marker"],)
    tiles = tuple(sorted(i for t, i in vocab.items() if re.fullmatch(r"<\|img_row_\d+_col_\d+\|>", t)))
    if tiles:
        cfg.roles.extra["tile_marker"] = tiles


def naflex_rules(prefix: str) -> list[tuple[str, str]]:
    p = re.escape(prefix)
    return vit_layer_rules(prefix) + [
        (rf"{p}\.embeddings\.patch_embedding\.(weight|bias)", r"vision.patch_embed.\1"),
        (rf"{p}\.embeddings\.position_embedding\.weight", "vision.pos_embed"),
        (rf"{p}\.post_layernorm\.weight", "vision.ln_post.w"),
        (rf"{p}\.post_layernorm\.bias", "vision.ln_post.b"),
    ]


def lfm2_vl_keymap(cfg: HookedVLMConfig) -> KeyMap:
    m = re.escape("model.multi_modal_projector")
    rules = [
        (rf"{m}\.layer_norm\.weight", "projector.ln.w"),
        (rf"{m}\.layer_norm\.bias", "projector.ln.b"),
        (rf"{m}\.linear_(1|2)\.(weight|bias)", r"projector.linear_\1.\2"),
    ]
    ignored = [(r"model\.vision_tower\.head\..*", "SigLIP2's attention-pooling head (vision_use_head) makes the pooled "
                                                 "output, which LFM2-VL never reads")]
    # hub checkpoints keep SigLIP2's inner module name (vision_tower.vision_model.*); checkpoints of the remote-code
    # release have no leading "model."
    aliases = [(r"^(language_model|vision_tower|multi_modal_projector)\.", r"model.\1."),
               (r"^model\.vision_tower\.vision_model\.", "model.vision_tower.")]
    return KeyMap(aliases=aliases, rules=lfm2_rules("model.language_model") + naflex_rules("model.vision_tower") + rules,
                  ignored=ignored)


CONVERTER = Converter(architectures=("Lfm2VlForConditionalGeneration",), make_config=lfm2_vl_config,
                      make_keymap=lfm2_vl_keymap, finalize=lfm2_vl_finalize)
