"""Llama4ForConditionalGeneration (meta-llama/Llama-4-Scout-17B-16E, Llama-4-Maverick-17B-128E): the Llama 4 vision
tower -> pixel-shuffle adapter -> linear projector -> the Llama 4 LM, image features spliced at ``<|patch|>``
(``image_token_index``).

A declaration: the ``llama4_vision_model`` tower and the ``pixel_shuffle_adapter`` projector
(``converters/_llama4_vision.py``), the ``llama4_text`` LM (``converters/_llama4_text.py``: chunked / NoPE layers, L2
q/k norm, temperature tuning, sigmoid-routed MoE with a shared expert) and the ``tiles_marked`` pipeline.

Prompts (Llama4Processor._prompt_split_image): per image ``<|image_start|>``, then, when the image was cut into
``rows x cols > 1`` tiles, per tile row ``cols`` tiles of ``<|patch|>`` x tokens_per_tile separated by
``<|tile_x_separator|>`` and ended by ``<|tile_y_separator|>``, then ``<|image|>`` and the global tile (the whole image
resized to one tile; the only tile when ``rows x cols == 1``), then ``<|image_end|>``. ``pixel_values`` holds the same
tiles in the same order ([n_tiles_total, 3, image_size, image_size]). Tiles of an image are counted between its
begin / end markers (config fields ``boi_token_index`` / ``eoi_token_index``); the global tile is the ``thumbnail``.

The checkpoint keeps HF's in-memory names (``vision_model.*``, ``multi_modal_projector.*``, ``language_model.model.*``,
``language_model.lm_head``) on disk too.
"""

from __future__ import annotations

from typing import Any

from ._llama4_vision import _shuffle_scale
from .llava_like import LlavaLike


def _settings(hf: Any) -> dict[str, Any]:
    vc = hf.vision_config
    return {"act_fn": "gelu", "bias": False, "scale_factor": _shuffle_scale(vc), "d_hidden": vc.projector_output_dim}


CONVERTER = LlavaLike(
    architecture="Llama4ForConditionalGeneration",
    fields=frozenset({"image_token_index", "boi_token_index", "eoi_token_index", "tie_word_embeddings"}),
    towers=("llama4_vision_model",),
    projector="pixel_shuffle_adapter",
    lms=("llama4_text",),
    lm_prefix="language_model.model",
    tower_prefix="vision_model",
    projector_prefix="multi_modal_projector",
    aliases=((r"^language_model\.lm_head\.", "lm_head."),),
    feature_layers=lambda hf: (-1,),  # HF always reads the last layer, class token dropped
    feature_select=lambda hf: "default",
    projector_settings=_settings,
    roles=lambda hf: {"boi_token_id": hf.boi_token_id, "eoi_token_id": hf.eoi_token_id},
).converter()
