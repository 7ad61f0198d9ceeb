"""Emu3ForConditionalGeneration: VQ image tokens (with an end-of-line token per row) in a Llama-style LM."""

from __future__ import annotations

from typing import Any

from hooked_vlm.config import HookedVLMConfig, TokenRoles

from ._decoder import decoder_config, decoder_rules
from ._vq import check_codes, vq_config
from .base import Converter, KeyMap, UnsupportedConfigError, check_fields

EMU3_FIELDS = {"vocabulary_map", "image_token_id", "tie_word_embeddings"}
BOI, EOI, EOL, EOF_, WRAPPER = "<|image start|>", "<|image end|>", "<|extra_200|>", "<|extra_201|>", "<|image token|>"

# save_pretrained writes the legacy layout; the in-memory one is under "model."
EMU3_ALIASES = [
    (r"^text_model\.model\.", "model.text_model."),
    (r"^text_model\.lm_head\.", "lm_head."),
    (r"^vqmodel\.", "model.vqmodel."),
]


def visual_code_tokens(vocabulary_map: dict[str, int]) -> dict[int, int]:
    """VQ code -> token id, from the ``<|visual tokenNNNNNN|>`` entries (as HF's mapping)."""
    return {int(name[-8:-2]): tok for name, tok in vocabulary_map.items() if name.startswith("<|visual token")}


def emu3_config(hf: Any) -> HookedVLMConfig:
    check_fields(hf, EMU3_FIELDS, "Emu3Config")
    vmap = hf.vocabulary_map or {}
    for name in ("<image>", EOL):
        if name not in vmap:
            raise UnsupportedConfigError(f"Emu3Config: vocabulary_map has no {name!r} token, which HF needs to place the "
                                         "image codes (image placeholder / end of each row of codes)")
    tc = hf.text_config
    text = decoder_config(tc)
    codes = visual_code_tokens(vmap)
    code_ids = sorted(codes.values())
    vq = vq_config(hf.vq_config, "transformers.models.emu3.modeling_emu3:Emu3VQVAE",
                   check_codes(codes, hf.vq_config.codebook_size, "Emu3Config"), encode="sized",
                   row_break_token_id=vmap[EOL])
    extra_roles = {name: (vmap[tok],) for name, tok in (("end_of_frame", EOF_), ("image_wrapper", WRAPPER)) if tok in vmap}
    return HookedVLMConfig(
        architecture="Emu3ForConditionalGeneration",
        text=text,
        d_vocab=tc.vocab_size,
        vision=vq,
        roles=TokenRoles(image_token_id=vmap["<image>"], boi_token_id=vmap.get(BOI), eoi_token_id=vmap.get(EOI),
                         pad_token_id=tc.pad_token_id, bos_token_id=tc.bos_token_id, eos_token_id=tc.eos_token_id,
                         extra=extra_roles),
        tie_word_embeddings=bool(hf.tie_word_embeddings or tc.tie_word_embeddings),
        native_multimodal=True,
        image_output=True,
        extra={"image_pipeline": "vq_tokens", "input_keys": ("image_sizes",), "image_code_ids": code_ids,
               "image_markers": ("image_wrapper", "end_of_frame"),
               "marker_names": {"image_wrapper": WRAPPER, "end_of_frame": EOF_}},
    )


def emu3_keymap(cfg: HookedVLMConfig) -> KeyMap:
    return KeyMap(
        aliases=EMU3_ALIASES,
        rules=decoder_rules("model.text_model") + [(r"model\.vqmodel\.(.+)", r"vision.vq.\1")],
    )


CONVERTER = Converter(architectures=("Emu3ForConditionalGeneration",), make_config=emu3_config, make_keymap=emu3_keymap)
