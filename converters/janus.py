"""JanusForConditionalGeneration, understanding path: SigLIP-style ViT + aligner MLP + Llama LM.

The image-GENERATION modules (VQ-VAE, generation embeddings / aligner / head) are not converted;
their tensors are listed in ``KeyMap.ignored`` with the reason (see docs/families.md, Janus).
"""

from __future__ import annotations

import re
from typing import Any

from hooked_vlm.config import HookedVLMConfig, ProjectorConfig, TokenRoles, VisionConfig
from hooked_vlm.processors import marker_vocab
from hooked_vlm.vocab import resolve_marker_tokens

from ._decoder import decoder_config, decoder_rules
from ._vit import patch_embedding_rules, post_layernorm_rules, vit_layer_rules, vit_tower
from .base import Converter, KeyMap, UnsupportedConfigError, check_fields

JANUS_FIELDS = {"image_token_id", "tie_word_embeddings"}
JANUS_VISION_FIELDS = {"hidden_size", "num_hidden_layers", "num_attention_heads", "num_channels", "image_size",
                       "patch_size", "hidden_act", "layer_norm_eps", "mlp_ratio", "attention_bias", "projection_dim",
                       "depth", "use_qk_norm", "hidden_dropout_rate", "projection_dropout",
                       "num_image_tokens"}  # read only by HF's image generation (the prompt's token count is checked)
BOI, EOI = "<begin_of_image>", "<end_of_image>"
NOT_CONVERTED = ("Janus image generation (VQ-VAE encoder/decoder, generation_embeddings, generation_aligner, "
                 "generation_head) is not converted: HookedVLM runs the understanding path (text output) only")


def janus_vision_config(vc: Any) -> VisionConfig:
    check_fields(vc, JANUS_VISION_FIELDS, "vision_config (janus_vision_model)")
    if vc.use_qk_norm:
        raise UnsupportedConfigError("vision_config (janus_vision_model): use_qk_norm=True: HF's Janus ViT then "
                                     "layer-normalises q and k, which this converter does not implement")
    if not isinstance(vc.image_size, int) or not isinstance(vc.patch_size, int):
        raise UnsupportedConfigError(f"vision_config (janus_vision_model): image_size={vc.image_size!r}, patch_size="
                                     f"{vc.patch_size!r}: non-square images or patches change the patch grid, and only "
                                     "square ones are implemented")
    if vc.depth != 2:
        raise UnsupportedConfigError(f"vision_config (janus_vision_model): depth={vc.depth}: HF's aligner has depth - 1 "
                                     "hidden layers and this converter implements depth 2 (fc1, act, fc2)")
    tower = vit_tower(vc, d_mlp=int(vc.hidden_size * vc.mlp_ratio), attn_bias=bool(vc.attention_bias))
    return VisionConfig(tower=tower, image_size=vc.image_size, patch_size=vc.patch_size, kind="vit_post_norm",
                        n_channels=vc.num_channels, class_token=False, patch_bias=True, ln_pre=False,
                        feature_layers=(-1,), feature_select="full")


def janus_config(hf: Any) -> HookedVLMConfig:
    check_fields(hf, JANUS_FIELDS, "JanusConfig")
    vc, tc = hf.vision_config, hf.text_config
    vision = janus_vision_config(vc)
    text = decoder_config(tc)
    if vc.projection_dim != text.d_model:
        raise UnsupportedConfigError(f"vision_config (janus_vision_model): projection_dim={vc.projection_dim} differs "
                                     f"from the LM hidden_size={text.d_model}: the aligner output could not be spliced "
                                     "into the LM (HF's forward fails)")
    return HookedVLMConfig(
        architecture="JanusForConditionalGeneration",
        text=text,
        d_vocab=tc.vocab_size,
        vision=vision,
        projector=ProjectorConfig(d_in=vc.hidden_size, d_out=vc.projection_dim, act_fn=vc.hidden_act, bias=True),
        roles=TokenRoles(image_token_id=hf.image_token_id, pad_token_id=tc.pad_token_id, bos_token_id=tc.bos_token_id,
                         eos_token_id=tc.eos_token_id),
        tie_word_embeddings=bool(hf.tie_word_embeddings),
        image_output=True,
        extra={"image_pipeline": "vit_mlp", "marker_tokens": {"boi": BOI, "eoi": EOI}, "image_markers": ("boi", "eoi"),
               "marker_names": {"boi": BOI, "eoi": EOI}},
    )


def janus_keymap(cfg: HookedVLMConfig) -> KeyMap:
    prefix = "model.vision_model"
    p = re.escape(prefix)
    return KeyMap(
        rules=decoder_rules("model.language_model") + patch_embedding_rules(prefix)
        + vit_layer_rules(prefix, out_proj="projection_layer") + post_layernorm_rules(prefix) + [
            (r"model\.aligner\.fc1\.(weight|bias)", r"projector.linear_1.\1"),
            (r"model\.aligner\.hidden_layers\.0\.(weight|bias)", r"projector.linear_2.\1"),
        ],
        ignored=[
            (r"model\.vqmodel\..+", NOT_CONVERTED),
            (r"model\.generation_(embeddings|aligner|head)\..+", NOT_CONVERTED),
            (rf"{p}\.embeddings\.position_ids", "a constant arange buffer"),
        ],
    )


def janus_finalize(cfg: HookedVLMConfig, processor: Any) -> None:
    """<begin_of_image> / <end_of_image> ids live only in the tokenizer: from the processor's, or, when the processor
    failed to load, from the checkpoint's tokenizer (files read directly if its class cannot load); raises if
    those files exist but give nothing."""
    resolve_marker_tokens(cfg, marker_vocab(processor))


CONVERTER = Converter(architectures=("JanusForConditionalGeneration",), make_config=janus_config, make_keymap=janus_keymap,
                      finalize=janus_finalize)
