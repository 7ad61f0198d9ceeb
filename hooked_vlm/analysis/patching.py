"""Activation patching and steering (the Narrow Gate paper's steering-by-patching experiment).

Patching copies the activation of a span from a *source* run (image A) into a *target* run
(image B) at chosen hook points; the k-th position of the span in the source goes to the k-th
position of the span in the target, so the two prompts may differ in length (the span lengths
must match). Sites: ``"resid_pre"`` = ``blocks.{l}.hook_resid_pre`` (residual stream entering
layer l), ``"attn_in"`` = ``blocks.{l}.ln1.hook_normalized`` (attention input, after the norm),
``"mlp_in"``, ``"resid_mid"``, ``"resid_post"``, ``"attn_out"``, ``"mlp_out"``, ``"z"``, or any
template with ``{l}``.

The default span, ``"image_end"``, is the end-of-image token on families that mark one (the Narrow Gate's EOI) and
the last image token elsewhere (LLaVA), so every call works on every model; pass ``span="eoi"`` to require the marker.

Metrics (at the ``last`` position): the logit difference between two tokens, whether its sign
flips relative to the unpatched target run, and the distribution similarity
``sum_v min(p_patched(v), p_source(v))`` (1 = the patched run predicts exactly like the source).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ._common import SpanLike, forward_with_hooks, gather_rows, layer_list, query_rows, span_mask
from .ablation import ablation_hook

SITES = {
    "resid_pre": "blocks.{l}.hook_resid_pre",
    "resid_mid": "blocks.{l}.hook_resid_mid",
    "resid_post": "blocks.{l}.hook_resid_post",
    "attn_in": "blocks.{l}.ln1.hook_normalized",
    "mlp_in": "blocks.{l}.ln2.hook_normalized",
    "attn_out": "blocks.{l}.hook_attn_out",
    "mlp_out": "blocks.{l}.hook_mlp_out",
    "z": "blocks.{l}.attn.hook_z",
}
"""Where patching and steering act: ``site=`` name -> hook-name template (``{l}`` is the layer)."""


def site_hook_names(model: Any, site: str = "resid_pre", layers: Sequence[int] | int | None = None) -> list[str]:
    """Hook names of ``site`` (a key of SITES or a template with ``{l}``) at ``layers`` (default all)."""
    template = SITES.get(site, site)
    if "{l}" not in template:
        return [template]
    names = [template.format(l=l) for l in layer_list(model, layers)]
    missing = {n: model.blocks[int(n.split(".")[1])].mixer_kind for n in names
               if n not in model.hook_dict and n.startswith("blocks.")}
    if missing and layers is None and len(missing) < len(names):  # hybrid: the site exists in some layer kinds only
        return [n for n in names if n not in missing]
    if missing:
        listing = ", ".join(f"{n} ({kind!r} layer)" for n, kind in missing.items())
        raise ValueError(f"site {site!r} does not exist in {listing}: that layer kind has no such hook (hybrid models: "
                         "docs/hybrid_models.md); name layers that have it, or layers=None for all that do")
    return names


@torch.no_grad()
def source_activations(model: Any, inputs: dict, hook_names: Sequence[str], span: SpanLike = "image_end") -> dict[str, Tensor]:
    """{hook name: activation of ``span`` [batch, n_span, ...]} from one forward on ``inputs``
    (items with a shorter span are padded with NaN; patching them into a longer span raises)."""
    got: dict[str, Tensor] = {}

    def grab(act: Tensor, hook: Any) -> None:
        got[hook.name] = gather_rows(act, query_rows(hook, span, act))

    forward_with_hooks(model, inputs, [(name, grab) for name in hook_names], return_type=None)
    return got


def patch_hook(source: Tensor, span: SpanLike = "image_end") -> Callable:
    """Hook writing ``source`` ([batch, n_span, ...] or [n_span, ...]) into ``span``, position by position."""
    return ablation_hook(span, "resample", source)


def activation_patching(model: Any, target_inputs: dict, source_inputs: dict | None = None, *, span: SpanLike = "image_end",
                        site: str = "resid_pre", layers: Sequence[int] | int | None = 0,
                        source_acts: dict[str, Tensor] | None = None, source_span: SpanLike | None = None) -> Tensor:
    """Logits of the target run with ``span`` patched from the source run at every hook of ``site``/``layers``.

    ``layers=range(l, n_layers)`` patches "all layers from l on"; ``source_acts`` (from
    :func:`source_activations`) skips the source forward.
    """
    names = site_hook_names(model, site, layers)
    if source_acts is None:
        source_acts = source_activations(model, source_inputs, names, span if source_span is None else source_span)
    return forward_with_hooks(model, target_inputs, [(n, patch_hook(source_acts[n], span)) for n in names])


def last_logits(logits: Tensor, spans: Any) -> Float[Tensor, "batch d_vocab"]:
    """Logits at each item's ``last`` position."""
    pos = span_mask(spans, "last").float().argmax(1)
    return logits[torch.arange(logits.shape[0], device=logits.device), pos.to(logits.device)]


def logit_diff(last: Tensor, tokens: Tensor) -> Tensor:
    """logit(tokens[:, 0]) - logit(tokens[:, 1]) per item; tokens [batch, 2] or [2]."""
    t = tokens.to(last.device).expand(last.shape[0], 2)
    return last.gather(1, t[:, :1])[:, 0] - last.gather(1, t[:, 1:])[:, 0]


def distribution_similarity(logits_a: Tensor, logits_b: Tensor) -> Tensor:
    """sum_v min(p_a(v), p_b(v)) per row (1 = identical next-token distributions)."""
    return torch.minimum(logits_a.float().softmax(-1), logits_b.float().softmax(-1)).sum(-1)


def flip_fraction(clean_diff: Tensor, patched_diff: Tensor) -> float:
    """Fraction of examples whose logit-difference sign differs between the clean and patched runs."""
    return float((torch.sign(clean_diff) != torch.sign(patched_diff)).float().mean())


@torch.no_grad()
def patching_sweep(model: Any, target_inputs: dict, source_inputs: dict, tokens: Sequence[int] | Tensor, *,
                   span: SpanLike = "image_end", site: str = "resid_pre", layers: Sequence[int] | None = None,
                   cumulative: bool = False) -> Any:
    """Patch ``span`` at each layer in turn (``cumulative=True``: that layer and all later ones).

    ``tokens``: (A, B) ids, or [batch, 2] per item (A = the source's answer, B = the target's).
    Returns a tidy DataFrame: batch, layer, logit_diff, clean_logit_diff, source_logit_diff,
    flipped, similarity (to the source distribution), clean_similarity (a :class:`~hooked_vlm.analysis.frames.PatchingSweepFrame`:
    ``.show()`` and a notebook display the interactive plot).
    """
    tokens = torch.as_tensor(tokens, dtype=torch.long, device=model.device)
    n = model.cfg.n_layers
    layers = layer_list(model, layers)
    all_names = site_hook_names(model, site, range(min(layers), n) if cumulative else layers)
    acts: dict[str, Tensor] = {}
    state: dict[str, Any] = {}

    def grab_spans(act: Tensor, hook: Any) -> None:
        state["spans"] = hook.spans

    src_logits = forward_with_hooks(model, source_inputs, [("hook_embed", grab_spans)])
    src_last = last_logits(src_logits, state["spans"])
    acts = source_activations(model, source_inputs, all_names, span)
    clean = forward_with_hooks(model, target_inputs, [("hook_embed", grab_spans)])
    tgt_spans = state["spans"]
    clean_last = last_logits(clean, tgt_spans)
    clean_diff = logit_diff(clean_last, tokens)
    rows = []
    for l in layers:
        names = site_hook_names(model, site, range(l, n) if cumulative else [l])
        patched = forward_with_hooks(model, target_inputs, [(nm, patch_hook(acts[nm], span)) for nm in names])
        p_last = last_logits(patched, tgt_spans)
        diff = logit_diff(p_last, tokens)
        sim = distribution_similarity(p_last, src_last)
        for b in range(p_last.shape[0]):
            rows.append(dict(batch=b, layer=l, site=site, cumulative=cumulative, logit_diff=float(diff[b]),
                             clean_logit_diff=float(clean_diff[b]), source_logit_diff=float(logit_diff(src_last, tokens)[b]),
                             flipped=bool(torch.sign(diff[b]) != torch.sign(clean_diff[b])), similarity=float(sim[b]),
                             clean_similarity=float(distribution_similarity(clean_last[b], src_last[b]))))
    from .frames import PatchingSweepFrame  # a DataFrame that displays as an interactive plot in notebooks (pandas: lazily)

    return PatchingSweepFrame(rows)


def steering_hook(vector: Tensor, scale: float = 1.0, span: SpanLike = "image_end") -> Callable:
    """Hook adding ``scale * vector`` ([d] or [batch, d]) to the activation at ``span`` rows."""

    def steer(act: Tensor, hook: Any) -> Tensor:
        rows = query_rows(hook, span, act)
        if not rows.any():
            return act
        v = (scale * vector).to(act.device, act.dtype)
        if v.ndim == act.ndim - 1:  # per batch item
            v = v[:, None].expand(act.shape[0], act.shape[1], *v.shape[1:])[rows]
        return act.index_put(rows.nonzero(as_tuple=True), act[rows] + v)

    return steer


def steer(model: Any, inputs: dict, vector: Tensor, *, scale: float = 1.0, span: SpanLike = "image_end",
          site: str = "resid_pre", layers: Sequence[int] | int | None = 0) -> Tensor:
    """Logits with ``scale * vector`` added at ``span`` on every hook of ``site``/``layers``."""
    return forward_with_hooks(model, inputs, [(n, steering_hook(vector, scale, span)) for n in site_hook_names(model, site, layers)])


@torch.no_grad()
def steering_vector(model: Any, inputs_a: dict, inputs_b: dict, *, span: SpanLike = "image_end", site: str = "resid_pre",
                    layer: int = 0) -> Float[Tensor, " d"]:
    """Mean activation difference A - B of ``span`` at one hook (over the batch and span positions)."""
    name = site_hook_names(model, site, [layer])[0]
    a = source_activations(model, inputs_a, [name], span)[name]
    b = source_activations(model, inputs_b, [name], span)[name]
    return a.flatten(0, 1).mean(0) - b.flatten(0, 1).mean(0)
