"""Which layers an analysis acts on, on models whose layers mix tokens in different ways (hybrid models).

Analyses that read or edit an attention pattern (``hook_pattern``, ``hook_mask``) have a meaning only on attention
layers (``MIXERS[kind].attention``); Gated DeltaNet (``linear_attention``) and short-convolution (``conv``) layers
have no [query, key] matrix. The rule every such analysis follows (docs/hybrid_models.md):

* ``layers=None``: it acts on the attention layers and says in its result which layers it skipped and why;
* a layer named explicitly that has no attention raises, naming the layer and its kind;
* knockout offers one exact intervention on linear / conv layers, ``source removal``: the source positions' input
  to the layer's mixer is zeroed, i.e. the layer treats them as padding (HF's own treatment of padding there), so
  their content reaches no later position through that layer (:func:`source_removal_hook`).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from torch import Tensor

from ._common import SpanLike, layer_list, span_mask


def is_attention_layer(model: Any, layer: int) -> bool:
    from ..components.mixers import mixer_kind

    return mixer_kind(model.blocks[layer].mixer_kind).attention


def split_layers(model: Any, layers: Sequence[int] | int | None) -> tuple[list[int], dict[int, str]]:
    """(the requested layers that have attention, {requested layer without attention: its layer kind})."""
    chosen = layer_list(model, layers)
    attention = [l for l in chosen if is_attention_layer(model, l)]
    return attention, {l: model.blocks[l].mixer_kind for l in chosen if l not in attention}


def attention_layers(model: Any, layers: Sequence[int] | int | None, what: str) -> tuple[list[int], dict[int, str]]:
    """The layers ``what`` (an analysis reading attention patterns) acts on, and those it skips with their kinds.

    ``layers=None``: every attention layer (the others are skipped and returned). A layer named explicitly that has
    no attention raises a ValueError naming the layer and its kind."""
    attention, other = split_layers(model, layers)
    if layers is not None and other:
        listing = ", ".join(f"layer {l} is a {kind!r} layer" for l, kind in other.items())
        raise ValueError(f"{what} reads attention patterns, which do not exist in non-attention layers: {listing} "
                         "(no [query, key] matrix; see docs/hybrid_models.md). Name attention layers only, or "
                         "layers=None for every attention layer")
    if not attention:
        raise ValueError(f"{what}: the model has no attention layer among the requested ones (kinds "
                         f"{sorted(set(other.values()))})")
    return attention, other


def source_removal_hook(src: SpanLike) -> Callable:
    """Hook for ``blocks.{l}.ln1.hook_normalized`` (the mixer's input in pre-norm and sandwich blocks) of a linear /
    conv layer: the ``src`` positions' input is zeroed, as the mixer zeroes padding, so they write nothing to the
    recurrent / conv state and their content reaches no later position through this layer (their own output there
    is what a padding position gets). Works while generating: the new positions are never ``src`` unless selected."""

    def remove_source(x: Tensor, hook: Any) -> Tensor:
        m = span_mask(hook.spans, src)[:, hook.query_positions].to(x.device)  # [batch, q]
        return x.masked_fill(m[..., None], 0.0)

    return remove_source


def check_source_removal(model: Any, layer: int) -> str:
    """The hook name of :func:`source_removal_hook` for ``layer``; raises where ln1 is not the mixer's input."""
    if model.cfg.text.norm_placement == "post_sublayer":
        raise ValueError(f"source removal edits the mixer input blocks.{layer}.ln1.hook_normalized, but with "
                         "norm_placement='post_sublayer' ln1 normalises the mixer OUTPUT; not supported")
    return f"blocks.{layer}.ln1.hook_normalized"
