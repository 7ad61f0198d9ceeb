"""Interventions on transcoder features: set or scale chosen features at chosen positions, then read the logits.

An :class:`Intervention` is ``(layer, position, feature)`` with either ``value=`` (set the activation) or
``scale=`` (multiply it). Two ways to run them (circuit-tracer's ``feature_intervention``):

* ``mode="frozen"`` (circuit-tracer's ``constrained_layers`` over every layer): the frozen replacement model,
  attention patterns, norm scales, every other feature and every error fixed at their clean values. Only the
  changed features' decoder vectors (and the skip connections) carry the change, so the change of a logit (before
  any soft-cap) is exactly what the graph's edges predict: ``delta = sum_k adjacency[logit, k] * (new_k / a_k - 1)``.
* ``mode="free"``: the real model, nothing frozen. At each intervened layer the transcoder encodes the *current*
  MLP input, and the MLP's real output gets ``(new - current activation) * W_dec[f]`` added at the intervened
  positions (at every layer it writes to, for a CLT); later layers, attention and features respond.
  ``freeze_attention=True`` keeps the clean attention patterns (circuit-tracer's default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from .replacement import clean_run, replacement_forward
from .transcoders import as_transcoder_set


@dataclass(frozen=True)
class Intervention:
    layer: int
    position: int
    feature: int
    value: float | None = None  # set the activation to this
    scale: float | None = None  # or multiply it by this

    def __post_init__(self) -> None:
        if (self.value is None) == (self.scale is None):
            raise ValueError(f"{self}: give exactly one of value= (set the activation) or scale= (multiply it)")

    def new(self, current: Tensor) -> Tensor:
        return current * self.scale if self.scale is not None else torch.full_like(current, float(self.value))


def _as_interventions(items: Sequence[Any]) -> list[Intervention]:
    out = []
    for it in items:
        if isinstance(it, Intervention):
            out.append(it)
        elif isinstance(it, (tuple, list)) and len(it) == 4:  # circuit-tracer's (layer, pos, feature, value)
            out.append(Intervention(int(it[0]), int(it[1]), int(it[2]), value=float(it[3])))
        else:
            raise TypeError(f"an intervention is Intervention(layer, position, feature, value= | scale=) or a "
                            f"(layer, position, feature, value) tuple, got {it!r}")
    return out


def _check(items: list[Intervention], ts: Any, n_pos: int) -> None:
    for it in items:
        if not 0 <= it.layer < ts.n_layers or not -n_pos <= it.position < n_pos or not 0 <= it.feature < ts.d_sae:
            raise ValueError(f"{it} is outside the graph: layers 0..{ts.n_layers - 1}, positions 0..{n_pos - 1}, "
                             f"features 0..{ts.d_sae - 1}")


@torch.no_grad()
def feature_intervention(model: Any, inputs: dict, transcoders: Any, interventions: Sequence[Any],
                         mode: str = "frozen", freeze_attention: bool = False) -> tuple[Tensor, list[Tensor]]:
    """Logits [pos, d_vocab] (the model's, soft-capped as it does) after the interventions, and the feature
    activations per layer [pos, d_sae] of that run (in ``"frozen"`` mode: the ones used, i.e. clean + edits)."""
    if mode not in ("frozen", "free"):
        raise ValueError(f"mode must be 'frozen' (the frozen replacement) or 'free' (the real model), got {mode!r}")
    ts = as_transcoder_set(transcoders).to(model.device, model.dtype)
    items = _as_interventions(interventions)
    run = clean_run(model, inputs, ts)
    n_pos = run.embeds.shape[0]
    _check(items, ts, n_pos)
    if mode == "frozen":
        acts = [a.clone() for a in run.acts]
        for it in items:
            a = acts[it.layer]
            a[it.position, it.feature] = it.new(run.acts[it.layer][it.position, it.feature])
        logits, _ = replacement_forward(model, run, ts, acts=acts)
        return logits[0], acts
    by_layer: dict[int, list[Intervention]] = {}
    for it in items:
        by_layer.setdefault(it.layer, []).append(it)
    seen: list[Tensor | None] = [None] * ts.n_layers
    deltas: dict[int, Tensor] = {}

    def read(x: Tensor, hook: Any, layer: int) -> Tensor:
        acts = ts.encode(layer, x[0].to(ts.W_enc[layer].dtype))
        seen[layer] = acts
        if layer in by_layer:
            change = torch.zeros_like(acts)
            for it in by_layer[layer]:
                change[it.position, it.feature] = it.new(acts[it.position, it.feature]) - acts[it.position, it.feature]
            for dst in ts.targets_of(layer):
                deltas[dst] = deltas.get(dst, 0) + change @ ts.W_dec[(layer, dst)]
        return x

    def write(x: Tensor, hook: Any, layer: int) -> Tensor:
        d = deltas.pop(layer, None)
        return x if d is None else x + d.to(x.dtype)

    hooks = []
    for l in range(ts.n_layers):
        hooks.append((ts.input_hooks[l], lambda x, hook, l=l: read(x, hook, l)))
        hooks.append((ts.output_hooks[l], lambda x, hook, l=l: write(x, hook, l)))
    if freeze_attention:
        hooks += [(n, lambda x, hook: run.frozen[hook.name].to(x.dtype)) for n in run.frozen if n.endswith("hook_pattern")]
    with model.hooks(fwd_hooks=hooks):
        logits = model(**run.inputs)
    return logits[0], [s for s in seen]


def predicted_logit_change(graph: Any, interventions: Sequence[Any]) -> Tensor:
    """[n_logits] the graph's prediction of each logit node's change (before any soft-cap) under ``interventions``
    in the frozen replacement: edges are linear in the source's activation."""
    items = _as_interventions(interventions)
    delta = torch.zeros(graph.n_logits, dtype=graph.adjacency.dtype)
    for it in items:
        node = graph.feature_node(it.layer, it.position % graph.n_pos, it.feature)
        a = graph.activations[node]
        new = it.new(a)
        delta += graph.adjacency[graph.logit_offset:, node] * (new - a) / a
    return delta
