"""Llama 4's vision tower (HF ``Llama4VisionModel``, ``vision_config.model_type == "llama4_vision_model"``) and its
pixel-shuffle adapter + projector -> VisionConfig / ProjectorConfig + key rules.

- The tower is the ``vit_rope2d`` kind (hooked_vlm/components/rope2d_vision.py): ``patch_embedding`` (``nn.Unfold`` +
  Linear without bias), ``class_embedding`` appended AFTER the patches, ``positional_embedding_vlm`` (learned, class
  last), ``layernorm_pre``, blocks of LayerNorm -> biased attention with 2-D RoPE (HF's complex ``freqs_ci``: (even,
  odd) pairs, the first half of each head turned by column + 1, the second by row + 1, the class token unturned) ->
  LayerNorm -> fc1 / GELU / fc2 with biases, then ``layernorm_post``; the class token is dropped.
- HF hard-codes what some fields seem to choose: every LayerNorm is ``nn.LayerNorm(hidden)`` (eps 1e-5, ``norm_eps``
  never read), every activation ``nn.GELU()`` (``hidden_act`` never read), the projector ``linear_1`` has no bias
  (``multi_modal_projector_bias`` never read), the last layer without the class token is always the output
  (``vision_feature_layer`` / ``vision_feature_select_strategy`` never read).
- Adapter + projector = the ``pixel_shuffle`` projector in its ``"adapter"`` form: pixel shuffle by
  ``1 / pixel_shuffle_ratio`` (HF's ``pixel_shuffle`` gives the same order as Idefics3's), ``vision_adapter.mlp.fc1``
  -> GELU -> ``fc2`` -> GELU (``projector.hook_adapter_out``, HF's vision_model output) -> ``multi_modal_projector.
  linear_1``. HF builds ``fc1`` with input ``intermediate_size``, ``fc2`` with input ``projector_output_dim`` and
  ``linear_1`` with input ``vision_output_dim``; configs where these do not chain (HF's own forward would fail) are
  refused.
"""

from __future__ import annotations

import re
from typing import Any

from hooked_vlm.config import ProjectorConfig, TowerConfig, VisionConfig

from .base import UnsupportedConfigError, check_fields

LLAMA4_VISION_FIELDS = {"hidden_size", "num_hidden_layers", "num_attention_heads", "num_channels", "intermediate_size",
                        "vision_output_dim", "image_size", "patch_size", "pixel_shuffle_ratio", "projector_input_dim",
                        "projector_output_dim", "rope_parameters"}
LLAMA4_VISION_IGNORED = {
    "hidden_act": "HF's Llama4VisionMLP / Llama4VisionMLP2 use nn.GELU() whatever it says",
    "norm_eps": "HF's vision LayerNorms are nn.LayerNorm(hidden_size) with the default eps 1e-5",
    "multi_modal_projector_bias": "HF's Llama4MultiModalProjector builds linear_1 with bias=False whatever it says",
    "vision_feature_select_strategy": "HF's Llama 4 always drops the class token (Llama4VisionModel.forward)",
    "vision_feature_layer": "HF's Llama 4 always reads the last layer (Llama4VisionModel.forward)",
    "projector_dropout": "dropout, off in eval",
}
NORM_EPS = 1e-5  # nn.LayerNorm's default, what HF's Llama 4 tower uses


def _shuffle_scale(vc: Any) -> int:
    scale = round(1 / vc.pixel_shuffle_ratio)
    if abs(1 / vc.pixel_shuffle_ratio - scale) > 1e-9 or scale < 1:
        raise UnsupportedConfigError(f"vision_config.pixel_shuffle_ratio={vc.pixel_shuffle_ratio}: only 1 / n (n an "
                                     "integer: n x n patches folded into one token) is implemented")
    return scale


def llama4_vision_config(vc: Any, feature_layers: tuple[int, ...], feature_select: str) -> VisionConfig:
    where = "vision_config (llama4_vision_model)"
    check_fields(vc, LLAMA4_VISION_FIELDS, where, LLAMA4_VISION_IGNORED)
    if not isinstance(vc.image_size, int) or not isinstance(vc.patch_size, int):
        raise UnsupportedConfigError(f"{where}: image_size={vc.image_size!r} / patch_size={vc.patch_size!r} must be "
                                     "integers (square tiles; HF's rotary table divides them)")
    d_head, rem = divmod(vc.hidden_size, vc.num_attention_heads)
    if rem or d_head % 4:
        raise UnsupportedConfigError(f"{where}: hidden_size {vc.hidden_size} / num_attention_heads "
                                     f"{vc.num_attention_heads} must give a head size divisible by 4 (2-D RoPE pairs)")
    rope = dict(vc.rope_parameters or {"rope_type": "default", "rope_theta": 10000.0})
    if rope.get("rope_type", "default") != "default":
        raise UnsupportedConfigError(f"{where}: rope_parameters={rope!r}; HF's Llama4VisionRotaryEmbedding reads "
                                     "rope_theta only, so only rope_type 'default' is what HF computes")
    scale = _shuffle_scale(vc)
    grid = vc.image_size // vc.patch_size
    if grid % scale:
        raise UnsupportedConfigError(f"{where}: the {grid} x {grid} patch grid does not fold into {scale} x {scale} "
                                     f"blocks (pixel_shuffle_ratio {vc.pixel_shuffle_ratio})")
    d_shuffled = vc.hidden_size * scale * scale
    chain = {"intermediate_size (vision_adapter fc1 input)": (vc.intermediate_size, d_shuffled),
             "projector_output_dim (fc2 input)": (vc.projector_output_dim, vc.projector_input_dim),
             "vision_output_dim (multi_modal_projector input)": (vc.vision_output_dim, vc.projector_output_dim)}
    for name, (value, needed) in chain.items():
        if value != needed:
            raise UnsupportedConfigError(f"{where}: {name} = {value} but it receives width {needed}; HF's own forward "
                                         "fails on such a config")
    tower = TowerConfig(
        n_layers=vc.num_hidden_layers, d_model=vc.hidden_size, n_heads=vc.num_attention_heads, d_head=d_head,
        d_mlp=vc.intermediate_size, act_fn="gelu", gated_mlp=False, normalization_type="LN", norm_eps=NORM_EPS,
        attn_bias=True, attn_out_bias=True, mlp_bias=True, causal=False, positional="rope2d", rope_interleaved=True,
        rope_axes=2, max_position_embeddings=grid * grid + 1)
    return VisionConfig(tower=tower, image_size=vc.image_size, patch_size=vc.patch_size, kind="vit_rope2d",
                        n_channels=vc.num_channels, class_token=True, patch_bias=False, ln_pre=True,
                        feature_layers=(-1,), feature_select="default",
                        extra={"rope_theta": float(rope.get("rope_theta", 10000.0)), "class_token_last": True,
                               "rope_position_offset": 1, "ln_post": True})


def llama4_vision_rules(prefix: str) -> list[tuple[str, str]]:
    """Key rules for HF's Llama4VisionModel under ``prefix`` (``vision_model``); the adapter is the projector's."""
    p = re.escape(prefix)
    layer = rf"{p}\.model\.layers\.(\d+)"
    return [
        (rf"{p}\.patch_embedding\.linear\.weight", "vision.patch_embed.weight"),
        (rf"{p}\.class_embedding", "vision.class_embedding"),
        (rf"{p}\.positional_embedding_vlm", "vision.pos_embed"),
        (rf"{p}\.layernorm_(pre|post)\.weight", r"vision.ln_\1.w"),
        (rf"{p}\.layernorm_(pre|post)\.bias", r"vision.ln_\1.b"),
        (rf"{layer}\.self_attn\.(q|k|v|o)_proj\.(weight|bias)", r"vision.blocks.\1.attn.\2_proj.\3"),
        (rf"{layer}\.input_layernorm\.weight", r"vision.blocks.\1.ln1.w"),
        (rf"{layer}\.input_layernorm\.bias", r"vision.blocks.\1.ln1.b"),
        (rf"{layer}\.post_attention_layernorm\.weight", r"vision.blocks.\1.ln2.w"),
        (rf"{layer}\.post_attention_layernorm\.bias", r"vision.blocks.\1.ln2.b"),
        (rf"{layer}\.mlp\.fc1\.(weight|bias)", r"vision.blocks.\1.mlp.up_proj.\2"),
        (rf"{layer}\.mlp\.fc2\.(weight|bias)", r"vision.blocks.\1.mlp.down_proj.\2"),
    ]


def llama4_vision_ignored(prefix: str) -> list[tuple[str, str]]:
    p = re.escape(prefix)
    return [(rf"{p}\.rotary_embedding\.freqs_ci", "the 2-D rotary table, recomputed from rope_theta")]


def llama4_adapter_config(d_in: int, d_out: int, settings: dict[str, Any]) -> ProjectorConfig:
    """settings: scale_factor, d_hidden (projector_output_dim), act_fn, bias (from the family declaration)."""
    return ProjectorConfig(d_in=d_in, d_out=d_out, act_fn=settings["act_fn"], bias=settings["bias"],
                           kind="pixel_shuffle", extra={"scale_factor": settings["scale_factor"], "mlp": "adapter",
                                                        "d_hidden": settings["d_hidden"]})


def llama4_adapter_rules(prefix: str) -> list[tuple[str, str]]:
    """``{prefix}.linear_1`` (multi_modal_projector) and the tower's ``vision_adapter.mlp.fc1 / fc2`` beside it."""
    parent = prefix.rsplit(".", 1)[0] + "." if "." in prefix else ""
    adapter = re.escape(f"{parent}vision_model.vision_adapter.mlp")
    return [
        (rf"{re.escape(prefix)}\.linear_1\.weight", "projector.proj.weight"),
        (rf"{adapter}\.fc(1|2)\.weight", r"projector.linear_\1.weight"),
    ]


#: span name -> the token Llama4Processor writes (``_prompt_split_image``); ids come from the tokenizer
MARKER_TOKENS = {"tile_x_separator": "<|tile_x_separator|>", "tile_y_separator": "<|tile_y_separator|>",
                 "global_tile_marker": "<|image|>"}


def llama4_marker_roles(cfg: Any, processor: Any) -> None:
    """The tile separators and the ``<|image|>`` token before the global tile, from the tokenizer (spans of those
    names); nothing without a tokenizer (the forward does not need them: tiles are counted between the begin / end
    markers, which are config fields)."""
    from hooked_vlm.processors import marker_vocab

    vocab = marker_vocab(processor)
    tok = getattr(vocab, "tokenizer", vocab)
    if tok is None or cfg.roles is None:
        return
    for name, token in MARKER_TOKENS.items():
        token_id = tok.convert_tokens_to_ids(token)
        if token_id is not None and token_id != getattr(tok, "unk_token_id", None):
            cfg.roles.extra[name] = (int(token_id),)
