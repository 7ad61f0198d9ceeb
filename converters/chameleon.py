"""ChameleonForConditionalGeneration: VQ image tokens in the LM vocabulary, per-head q/k LayerNorm."""

from __future__ import annotations

from typing import Any

from hooked_vlm.config import HookedVLMConfig, TokenRoles, TowerConfig

from ._decoder import check_rope_type, decoder_rules
from ._vq import check_codes, vq_config
from .base import Converter, KeyMap, UnsupportedConfigError, check_fields

CHAMELEON_FIELDS = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_parameters",
                    "attention_bias", "mlp_bias", "tie_word_embeddings", "model_parallel_size", "swin_norm",
                    "vocabulary_map", "image_token_id"}
QK_NORM_EPS = 1e-5  # ChameleonLayerNorm hard-codes it
BOI, EOI = "<racm3:break>", "<eoss>"
_DIGITS = {chr(ord("A") + i): str(i) for i in range(10)}


def image_code_tokens(vocabulary_map: dict[str, int]) -> dict[int, int]:
    """VQ code -> token id, from the ``IMGIMG<digits as letters A-J>Z`` entries (as HF's mapping)."""
    return {int("".join(_DIGITS.get(ch, ch) for ch in name[len("IMGIMG"):-1])): tok
            for name, tok in vocabulary_map.items() if name.startswith("IMGIMG")}


def chameleon_config(hf: Any) -> HookedVLMConfig:
    check_fields(hf, CHAMELEON_FIELDS, "ChameleonConfig")
    rope = dict(hf.rope_parameters or {"rope_type": "default", "rope_theta": 10000.0})
    check_rope_type(rope, "ChameleonConfig")
    vmap = hf.vocabulary_map or {}
    if "<image>" not in vmap:
        raise UnsupportedConfigError("ChameleonConfig: vocabulary_map has no '<image>' token, so the image placeholder "
                                     "positions (where HF splices the VQ codes) cannot be found")
    codes = image_code_tokens(vmap)
    code_ids = sorted(codes.values())
    text = TowerConfig(
        n_layers=hf.num_hidden_layers, d_model=hf.hidden_size, n_heads=hf.num_attention_heads,
        n_key_value_heads=hf.num_key_value_heads, d_head=hf.hidden_size // hf.num_attention_heads,
        d_mlp=hf.intermediate_size, act_fn=hf.hidden_act, gated_mlp=True, normalization_type="RMS",
        norm_eps=hf.rms_norm_eps, attn_bias=bool(hf.attention_bias), attn_out_bias=bool(hf.attention_bias),
        mlp_bias=bool(hf.mlp_bias), causal=True, positional="rope", rope_parameters=rope,
        max_position_embeddings=hf.max_position_embeddings,
        qk_norm="LN", qk_norm_per_head=True, qk_norm_eps=QK_NORM_EPS,
        norm_placement="post_sublayer" if hf.swin_norm else "pre",  # swin_norm: Chameleon-34B's norm reordering
    )
    vq = vq_config(hf.vq_config, "transformers.models.chameleon.modeling_chameleon:ChameleonVQVAE",
                   check_codes(codes, hf.vq_config.num_embeddings, "ChameleonConfig"), encode="indices")
    return HookedVLMConfig(
        architecture="ChameleonForConditionalGeneration",
        text=text,
        d_vocab=hf.vocab_size,
        vision=vq,
        roles=TokenRoles(image_token_id=vmap["<image>"], boi_token_id=vmap.get(BOI), eoi_token_id=vmap.get(EOI),
                         pad_token_id=hf.pad_token_id, bos_token_id=hf.bos_token_id, eos_token_id=hf.eos_token_id),
        tie_word_embeddings=bool(hf.tie_word_embeddings),
        native_multimodal=True,
        image_output=True,
        extra={"image_pipeline": "vq_tokens", "suppress_token_ids": code_ids, "image_code_ids": code_ids,
               "image_markers": ("boi", "eoi"), "marker_names": {"boi": BOI, "eoi": EOI}},
    )


def chameleon_keymap(cfg: HookedVLMConfig) -> KeyMap:
    return KeyMap(
        rules=decoder_rules("model") + [
            (r"model\.layers\.(\d+)\.self_attn\.(q|k)_norm\.weight", r"blocks.\1.attn.\2_norm.w"),
            (r"model\.layers\.(\d+)\.self_attn\.(q|k)_norm\.bias", r"blocks.\1.attn.\2_norm.b"),
            (r"model\.vqmodel\.(.+)", r"vision.vq.\1"),
        ],
    )


CONVERTER = Converter(architectures=("ChameleonForConditionalGeneration",), make_config=chameleon_config,
                      make_keymap=chameleon_keymap)
