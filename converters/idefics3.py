"""Idefics3ForConditionalGeneration and SmolVLMForConditionalGeneration (the same architecture).

SigLIP-style NaViT tower (no class token, bucketed learned positions, padded tiles masked,
post-layernorm) -> pixel shuffle + linear connector -> Llama LM. Images are split into tiles plus a
global image; the prompt marks them with ``<fake_token_around_image>``, ``<row_r_col_c>`` and
``<global-img>``. Those ids live in the tokenizer, not the config: they are read from the
checkpoint folder's tokenizer (without one, markers count as text and every tile as an image).
Spans: ``image_border`` (<fake_token_around_image>), ``tile_marker`` (<row_r_col_c>),
``global_marker`` (<global-img>).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hooked_vlm.config import HookedVLMConfig, ProjectorConfig, TokenRoles, VisionConfig

from ._decoder import decoder_config, decoder_rules
from ._vit import patch_embedding_rules, post_layernorm_rules, vit_layer_rules, vit_tower
from .base import Converter, KeyMap, UnsupportedConfigError, check_copy, check_fields, check_legacy_vocab_size

# the top-level pad_token_id (SmolVLM2: 128002, beyond the vocabulary) is kept as _pad_token_id, which HF only warns
# about: the embedding's padding_idx and generation's pad_token_id both come from text_config.pad_token_id
TOP_FIELDS = {"image_token_id", "scale_factor", "tie_word_embeddings", "_pad_token_id", "pad_token_id",
              "vocab_size"}  # legacy copy of text_config.vocab_size (checked equal)
VISION_FIELDS = {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
                 "image_size", "patch_size", "hidden_act", "layer_norm_eps"}
_PROCESSOR_COPY = ("an image-processor setting copied into the model config; the vision model never reads it "
                   "(the processor's preprocessor_config.json does the resizing)")
VISION_IGNORED = {
    "max_image_size": _PROCESSOR_COPY, "size": _PROCESSOR_COPY,
    "use_base_siglip": "a switch of the original (m4) training code; HF's Idefics3 / SmolVLM vision model has one "
                       "implementation and never reads it",
    "tie_word_embeddings": "a vision tower has no word embeddings",
}
# the original (m4) training code's Llama settings, written into SmolVLM text configs
TEXT_IGNORED = {"is_llama_config": "a marker of the original training code; HF's Llama never reads it",
                "pixel_shuffle_factor": "a copy of the top-level scale_factor, which HF reads (checked equal)"}
TEXT_PINNED = {
    "qk_layer_norms": (False, "True would mean layer norms on q and k in the original code; HF's Llama has no "
                              "q/k norm"),
    "rope_interleaved": (False, "True rotates interleaved (even, odd) pairs; HF's Llama rotates the two halves of "
                                "each head"),
    "use_resampler": (False, "True puts a perceiver resampler (perceiver_config) between the connector and the LM, "
                             "which HF's Idefics3 does not build"),
}
# hub checkpoints saved by older versions lack the leading "model."
ALIASES = [(r"^(text_model|vision_model|connector)\.", r"model.\1.")]


def marker_ids(folder: str | None) -> dict[str, Any]:
    """Ids of the image marker tokens, from the checkpoint's tokenizer ({} when it has none)."""
    if not folder or not ((Path(folder) / "tokenizer.json").exists() or (Path(folder) / "tokenizer_config.json").exists()):
        return {}
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(folder).get_vocab()
    tiles = {vocab[f"<row_{r}_col_{c}>"]: [r - 1, c - 1] for r in range(1, 7) for c in range(1, 7)
             if f"<row_{r}_col_{c}>" in vocab}
    return {"fake": vocab.get("<fake_token_around_image>"), "global": vocab.get("<global-img>"), "tiles": tiles}


def idefics3_config(hf: Any) -> HookedVLMConfig:
    check_fields(hf, TOP_FIELDS, type(hf).__name__)
    check_legacy_vocab_size(hf)
    vc, tc = hf.vision_config, hf.text_config
    check_fields(vc, VISION_FIELDS, f"vision_config ({vc.model_type})", VISION_IGNORED)
    if tc.model_type != "llama":
        raise UnsupportedConfigError(f"{type(hf).__name__}: text_config.model_type={tc.model_type!r} is a language model "
                                     "this converter does not build here; supported: llama")
    text = decoder_config(tc, TEXT_IGNORED, TEXT_PINNED)
    check_copy(tc, "pixel_shuffle_factor", hf.scale_factor, "scale_factor", f"{type(hf).__name__}.text_config")
    if vc.image_size % vc.patch_size or (vc.image_size // vc.patch_size) % hf.scale_factor:
        raise UnsupportedConfigError(
            f"vision_config image_size={vc.image_size} / patch_size={vc.patch_size} must be a multiple of "
            f"scale_factor={hf.scale_factor}: the pixel shuffle folds scale_factor x scale_factor patches into one "
            "token, and HF's reshape fails on a grid it does not divide")
    tower = vit_tower(vc)
    vision = VisionConfig(tower=tower, image_size=vc.image_size, patch_size=vc.patch_size, kind="navit",
                          n_channels=vc.num_channels, class_token=False, patch_bias=True, ln_pre=False,
                          feature_layers=(-1,))
    projector = ProjectorConfig(d_in=vc.hidden_size, d_out=text.d_model, bias=False, kind="pixel_shuffle",
                                extra={"scale_factor": hf.scale_factor})
    markers = marker_ids(getattr(hf, "_name_or_path", None))
    roles_extra = {}
    if markers.get("fake") is not None:
        roles_extra["image_border"] = (markers["fake"],)
    if markers.get("tiles"):
        roles_extra["tile_marker"] = tuple(sorted(markers["tiles"]))
    if markers.get("global") is not None:
        roles_extra["global_marker"] = (markers["global"],)
    return HookedVLMConfig(
        architecture=hf.architectures[0] if getattr(hf, "architectures", None) else "Idefics3ForConditionalGeneration",
        text=text, d_vocab=tc.vocab_size, vision=vision, projector=projector,
        roles=TokenRoles(image_token_id=hf.image_token_id, pad_token_id=tc.pad_token_id, bos_token_id=tc.bos_token_id,
                         eos_token_id=tc.eos_token_id, extra=roles_extra),
        # HF ties lm_head to the embeddings on the top-level flag only (text_config's is not forwarded here)
        tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
        extra={"image_pipeline": "idefics3", "input_keys": ("pixel_attention_mask",), "idefics3_markers": markers},
    )


def navit_rules(prefix: str) -> list[tuple[str, str]]:
    return patch_embedding_rules(prefix) + vit_layer_rules(prefix) + post_layernorm_rules(prefix)


def idefics3_keymap(cfg: HookedVLMConfig) -> KeyMap:
    return KeyMap(aliases=ALIASES, rules=decoder_rules("model.text_model") + navit_rules("model.vision_model") + [
        (r"model\.connector\.modality_projection\.proj\.weight", "projector.proj.weight"),
    ])


CONVERTER = Converter(
    architectures=("Idefics3ForConditionalGeneration", "SmolVLMForConditionalGeneration"),
    make_config=idefics3_config,
    make_keymap=idefics3_keymap,
)
