"""Ovis2ForConditionalGeneration (thisisiron/Ovis2-*-hf): AIMv2-style ViT -> visual tokenizer head (fold
hidden_stride x hidden_stride patches, linear, LayerNorm, softmax over visual words) x visual embedding table ->
Qwen2 LM; a thumbnail then a grid of crops per image, marked in the prompt.

The parts: tower ``ovis2_vision`` and projector ``visual_embedding_table`` (converters/_aimv2.py), LM by
``text_config.model_type``. The five visual indicator tokens (``visual_indicator_token_ids``: image start, grid,
crop column separator, crop row separator, image end -- the order HF's conversion script adds them in) are embedded
by the table's last rows when images are given (``TokenRoles.projector_marker_ids``), and give the spans ``boi``,
``grid_marker``, ``crop_col_break``, ``crop_row_break``, ``eoi``. HF's ``lm_head`` and the table are sized by the
top-level ``vocab_size`` / ``hidden_size``, accepted when they equal the LM's.
"""

from __future__ import annotations

from typing import Any

from ._aimv2 import table_settings
from .base import UnsupportedConfigError, check_copy
from .llava_like import LLAVA_ALIASES, LlavaLike

MARKERS = ("boi", "grid_marker", "crop_col_break", "crop_row_break", "eoi")


def _check(hf: Any) -> None:
    check_copy(hf, "hidden_size", hf.text_config.hidden_size, "text_config.hidden_size", type(hf).__name__)
    ids = list(hf.visual_indicator_token_ids)
    n = hf.vision_config.num_visual_indicator_tokens
    if len(ids) != len(MARKERS) or n != len(MARKERS):
        raise UnsupportedConfigError(
            f"visual_indicator_token_ids={ids} with num_visual_indicator_tokens={n}: the crop layout (start, grid, "
            f"column, row, end markers) needs exactly {len(MARKERS)} indicator tokens and table rows")
    if hf.image_token_id in ids or len(set(ids)) != len(ids):
        raise UnsupportedConfigError(f"visual_indicator_token_ids={ids} / image_token_id={hf.image_token_id}: the "
                                     "indicator ids must be distinct and differ from the image token")


def _roles(hf: Any) -> dict[str, Any]:
    ids = [int(i) for i in hf.visual_indicator_token_ids]
    return {"boi_token_id": ids[0], "eoi_token_id": ids[4], "projector_marker_ids": tuple(ids)}


CONVERTER = LlavaLike(
    architecture="Ovis2ForConditionalGeneration",
    fields=frozenset({"image_token_id", "visual_indicator_token_ids", "vocab_size", "hidden_size",
                      "tie_word_embeddings"}),  # vocab_size / hidden_size: lm_head's and the table's, checked equal
    towers=("ovis2_vision",),
    projector="visual_embedding_table",
    tower_prefix="model.vision_tower.transformer",
    projector_prefix="model",
    aliases=LLAVA_ALIASES + ((r"^visual_embeddings_table\.", "model.visual_embeddings_table."),),  # legacy layout
    feature_layers=lambda hf: (-1,),
    feature_select=lambda hf: "full",
    projector_settings=table_settings,
    check=_check,
    role_extra=lambda hf: {"grid_marker": (int(hf.visual_indicator_token_ids[1]),),
                           "crop_col_break": (int(hf.visual_indicator_token_ids[2]),),
                           "crop_row_break": (int(hf.visual_indicator_token_ids[3]),)},
    roles=_roles,
).converter()
