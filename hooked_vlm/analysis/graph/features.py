"""Transcoder features over a dataset: where one feature of a graph fires, drawn on the images.

:func:`transcoder_feature_acts` reads a layer's transcoder input (``TranscoderSet.input_hooks[layer]``, e.g.
``blocks.l.ln2.hook_normalized``) from a plain forward stopped after that block and encodes it with the set's own
encoder (``relu`` / JumpReLU of ``x @ W_enc + b_enc``): the activations the graph's feature nodes hold.
:func:`top_activating` ranks the (example, patch) pairs of a dataset by one feature (the running top k, batched with
a tqdm bar; SAE features share the ranking, :func:`hooked_vlm.saes.top_activating`) and keeps each example's map of
the feature over its image's patch grid; ``.plot()`` draws them (title, labelled axes, colour bar).
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor

from .._common import SpanLike
from .transcoders import as_transcoder_set


def _check(ts: Any, layer: int, feature: int) -> None:
    if not 0 <= layer < ts.n_layers:
        raise ValueError(f"layer {layer} out of range: the transcoder set has layers 0..{ts.n_layers - 1}")
    if not 0 <= feature < ts.d_sae:
        raise ValueError(f"feature {feature} out of range: the transcoders have d_sae={ts.d_sae} features "
                         f"(0..{ts.d_sae - 1})")


@torch.no_grad()
def transcoder_feature_acts(model: Any, transcoders: Any, inputs: dict, layer: int,
                            feature: int | None = None) -> tuple[Tensor, Any, str]:
    """(activations [batch, pos] of ``feature`` of ``layer``'s transcoder, or [batch, pos, d_sae] with
    ``feature=None``; the forward's spans; the hook read)."""
    ts = as_transcoder_set(transcoders)
    _check(ts, layer, 0 if feature is None else feature)
    hook = ts.input_hooks[layer]
    extra = {"stop_at_layer": layer + 1} if layer + 1 < model.cfg.n_layers else {"return_type": None}
    _, cache = model.run_with_cache(**dict(inputs), names_filter=[hook], **extra)
    w = ts.W_enc[layer]
    x = cache[hook].to(device=w.device, dtype=w.dtype)
    acts = ts.encode(layer, x).float()  # the graph's own encoder math (ReLU / JumpReLU)
    return (acts if feature is None else acts[..., feature]), cache.spans, hook


def top_activating(model: Any, transcoders: Any, dataset: Iterable[Any], layer: int, feature: int, k: int = 16,
                   batch_size: int = 8, span: SpanLike = "image", per_example: int | None = 1,
                   progress: bool = True) -> Any:
    """The ``k`` (example, patch) pairs of ``dataset`` where feature ``feature`` of ``layer``'s transcoder is
    highest, over positions of ``span`` that are image patches; ``per_example=1`` (default): the top ``k``
    examples, each at its strongest patch (None: no cap). Returns a
    :class:`hooked_vlm.saes.TopActivations` (``values``, ``examples``, ``cells``, ``grids``: the feature's map
    over each example's patch grid, ``images``; ``.to_dataframe()``, ``.plot()``).

    ``transcoders``: a :class:`TranscoderSet` or anything :func:`as_transcoder_set` takes (SAELens transcoders);
    ``dataset``: (image, prompt) pairs or prepared inputs, as :func:`hooked_vlm.analysis.iterate_batches` takes."""
    from ...saes.features import rank_patches  # saes imports analysis: bind it at call time

    ts = as_transcoder_set(transcoders)
    _check(ts, layer, feature)

    def acts_of(inputs: dict) -> tuple[Tensor, Any, str]:
        acts, spans, hook = transcoder_feature_acts(model, ts, inputs, layer, feature)
        return acts, spans, f"{hook} (layer {layer} transcoder)"

    return rank_patches(model, dataset, acts_of, feature, k, batch_size, span, per_example, progress,
                        label="transcoder feature")
