"""Idefics2ForConditionalGeneration (HuggingFaceM4/idefics2-8b): NaViT SigLIP tower -> gated MLP + perceiver
resampler (64 latents per image) -> Mistral LM.

The vision tower is Idefics3's NaViT SigLIP (converters/idefics3.py: same tensor names, post-layernorm read), with
HF Idefics2's patch rule (a patch is real when every one of its pixels is). The connector is projector kind
``perceiver_resampler`` (hooked_vlm/components/perceiver_resampler.py): ``modality_projection`` (gated, text
hidden_act and intermediate_size) then ``perceiver_resampler`` (latents cross-attend to [patches; latents], GQA, no
positions). Every image's LM tokens are its ``resampler_n_latents`` latents: spans ``latent``, no (row, col).
``<fake_token_around_image>`` (span ``image_border``) and the processor's ``do_image_splitting`` (5 sub-images per
image: tiles 0-3 the quarters, 4 the whole image) come from the checkpoint's processor (``finalize``).
"""

from __future__ import annotations

import re
from typing import Any

from hooked_vlm.config import HookedVLMConfig, ProjectorConfig, TokenRoles, TowerConfig, VisionConfig

from ._decoder import decoder_config, decoder_rules
from ._vit import vit_tower
from .base import Converter, KeyMap, UnsupportedConfigError, check_fields
from .idefics3 import ALIASES, VISION_FIELDS, navit_rules

TOP_FIELDS = {"image_token_id", "tie_word_embeddings"}
PERCEIVER_FIELDS = {"hidden_act", "hidden_size", "rms_norm_eps", "resampler_n_latents", "resampler_depth",
                    "resampler_n_heads", "resampler_head_dim", "num_key_value_heads"}
TEXT_TYPES = ("mistral", "llama")  # HF builds AutoModel.from_config(text_config); published checkpoints: Mistral
FAKE_TOKEN = "<fake_token_around_image>"
SPLIT_IMAGES = 5  # do_image_splitting: 4 quarters + the whole image


def perceiver_tower(pc: Any) -> TowerConfig:
    check_fields(pc, PERCEIVER_FIELDS, "perceiver_config (idefics2_perceiver)")
    if pc.resampler_n_heads % pc.num_key_value_heads:
        raise UnsupportedConfigError(f"perceiver_config: resampler_n_heads={pc.resampler_n_heads} is not a multiple of "
                                     f"num_key_value_heads={pc.num_key_value_heads} (HF's repeat_kv would fail)")
    return TowerConfig(n_layers=pc.resampler_depth, d_model=pc.hidden_size, n_heads=pc.resampler_n_heads,
                       n_key_value_heads=pc.num_key_value_heads, d_head=pc.resampler_head_dim, d_mlp=4 * pc.hidden_size,
                       act_fn=pc.hidden_act, gated_mlp=True, normalization_type="RMS", norm_eps=pc.rms_norm_eps,
                       causal=False, positional="none")


def idefics2_config(hf: Any) -> HookedVLMConfig:
    check_fields(hf, TOP_FIELDS, type(hf).__name__)
    vc, tc, pc = hf.vision_config, hf.text_config, hf.perceiver_config
    check_fields(vc, VISION_FIELDS, f"vision_config ({vc.model_type})")
    if tc.model_type not in TEXT_TYPES:
        raise UnsupportedConfigError(f"{type(hf).__name__}: text_config.model_type={tc.model_type!r} is a language model "
                                     f"this converter does not build here; supported: {', '.join(TEXT_TYPES)}")
    text = decoder_config(tc)
    if pc.hidden_size != tc.hidden_size:  # HF's Idefics2Config makes them equal on load; a hand-built config may not
        raise UnsupportedConfigError(f"perceiver_config.hidden_size={pc.hidden_size} differs from text_config.hidden_size="
                                     f"{tc.hidden_size}: the resampler's latents are LM tokens")
    vision = VisionConfig(tower=vit_tower(vc), image_size=vc.image_size, patch_size=vc.patch_size, kind="navit",
                          n_channels=vc.num_channels, class_token=False, patch_bias=True, ln_pre=False,
                          feature_layers=(-1,))
    projector = ProjectorConfig(d_in=vc.hidden_size, d_out=tc.hidden_size, act_fn=tc.hidden_act, bias=False,
                                kind="perceiver_resampler",
                                extra={"d_mlp": tc.intermediate_size, "n_latents": pc.resampler_n_latents,
                                       "resampler": perceiver_tower(pc)})
    return HookedVLMConfig(
        architecture="Idefics2ForConditionalGeneration", text=text, d_vocab=tc.vocab_size, vision=vision,
        projector=projector,
        roles=TokenRoles(image_token_id=hf.image_token_id, pad_token_id=tc.pad_token_id, bos_token_id=tc.bos_token_id,
                         eos_token_id=tc.eos_token_id),
        tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),  # HF ties on the top-level flag
        extra={"image_pipeline": "navit_resampler", "input_keys": ("pixel_attention_mask",), "sub_images_per_image": 1,
               "prepare_inputs_fn": idefics2_prepare_inputs},
    )


def idefics2_finalize(cfg: HookedVLMConfig, processor: Any) -> None:
    """From the checkpoint's processor: the <fake_token_around_image> id (span ``image_border``) and whether its image
    processor splits every image into 5 sub-images. Without a processor: no image_border span, 1 sub-image."""
    tok = getattr(processor, "tokenizer", None)
    if tok is not None and cfg.roles is not None:
        tid = tok.convert_tokens_to_ids(FAKE_TOKEN)
        if tid is not None and tid != tok.unk_token_id:
            cfg.roles.extra["image_border"] = (tid,)
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is not None:
        cfg.extra["sub_images_per_image"] = SPLIT_IMAGES if image_processor.do_image_splitting else 1


def idefics2_prepare_inputs(model: Any, images: Any = None, text: list[str] | None = None, **kwargs: Any) -> Any:
    """The processor's call; ``do_image_splitting`` may be given only as the model reads it (spans group sub-images
    by ``model.cfg.extra['sub_images_per_image']``)."""
    split = kwargs.get("do_image_splitting")
    expected = model.cfg.extra.get("sub_images_per_image", 1) == SPLIT_IMAGES
    if split is not None and bool(split) != expected:
        raise ValueError(f"do_image_splitting={split} but this model groups {model.cfg.extra.get('sub_images_per_image', 1)} "
                         "sub-image(s) per image (its processor's setting). Set model.processor.image_processor."
                         f"do_image_splitting = {bool(split)} and model.cfg.extra['sub_images_per_image'] = "
                         f"{SPLIT_IMAGES if split else 1} together instead")
    return model.processor(images=images, text=text, return_tensors="pt", **kwargs)


def idefics2_keymap(cfg: HookedVLMConfig) -> KeyMap:
    c = re.escape("model.connector")
    layer = rf"{c}\.perceiver_resampler\.layers\.(\d+)"
    norms = {"input_latents_norm": "ln1", "input_context_norm": "ln_context", "post_attention_layernorm": "ln2"}
    rules = [
        (rf"{c}\.modality_projection\.(gate|up|down)_proj\.weight", r"projector.mlp.\1_proj.weight"),
        (rf"{c}\.perceiver_resampler\.latents", "projector.resampler.latents"),
        *[(rf"{layer}\.{hf}\.weight", rf"projector.resampler.blocks.\1.{ours}.w") for hf, ours in norms.items()],
        (rf"{layer}\.self_attn\.(q|k|v|o)_proj\.weight", r"projector.resampler.blocks.\1.attn.\2_proj.weight"),
        (rf"{layer}\.mlp\.(gate|up|down)_proj\.weight", r"projector.resampler.blocks.\1.mlp.\2_proj.weight"),
        (rf"{c}\.perceiver_resampler\.norm\.weight", "projector.resampler.ln_final.w"),
    ]
    return KeyMap(aliases=ALIASES, rules=decoder_rules("model.text_model") + navit_rules("model.vision_model") + rules)


CONVERTER = Converter(architectures=("Idefics2ForConditionalGeneration",), make_config=idefics2_config,
                      make_keymap=idefics2_keymap, finalize=idefics2_finalize)
