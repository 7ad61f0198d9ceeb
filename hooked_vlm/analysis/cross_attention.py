"""Analyses of cross-attention models (Mllama), where the image lives only in the keys (docs/cross_attention.md).

Keys are named by :class:`~hooked_vlm.key_spans.KeySpans` (``cache.kv_spans``; inside a hook ``hook.run.extra
["kv_spans"]``): ``"image"``, ``"image.{i}"``, ``"tile.{t}"``, ``"cls"``, ``"patch"``, ``"padding"``, a list of names
(their union) or a bool mask [batch, key]. Queries are text positions, named by the usual token spans.

* :func:`key_ablation` -- span ablation of image keys at the projector output (``hook_image_embeds`` [batch, key,
  d_model]): zero, or the mean over the span's keys; every cross-attention layer then reads the ablated features.
* :func:`cross_attention_knockout` -- image -> text knockout through ``cross_attn.hook_mask``: the chosen keys are
  masked for the chosen query rows (renormalising over the rest); a row left with no key outputs zeros.
* :func:`key_patching` / :func:`key_steering` -- the image features of chosen keys replaced by another input's (same
  key layout), or shifted by ``alpha * direction``.
* :func:`cross_attention_flow` -- per cross-attention layer and head, the attention mass that query rows give to each
  key role (exact: the rows of ``hook_pattern`` sum to 1 over the keys).
* :func:`cross_patch_attribution` -- direct logit attribution of each (cross layer, head, image key) at a query row.
* :func:`key_logit_lens` -- ``unembed(ln_final(x))`` read on the projected image features x (``hook_image_embeds``).
  What it reads: the features are never in the residual stream; they enter only through each layer's k / v
  projections, so this measures how the final norm and unembedding would read those vectors if they were residuals
  -- a probe of the projector's output space, not a prediction of the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from fancy_einsum import einsum
from torch import Tensor

from ..key_spans import KeySpans
from ._common import SpanLike, forward_with_hooks, span_mask

KeyLike = str | Sequence[str] | Tensor


def cross_layers(model: Any, layers: Sequence[int] | int | None = None) -> list[int]:
    """The cross-attention layers among ``layers`` (default: all of them); raises on a model without any."""
    cross = [l for l, b in enumerate(model.blocks) if b.mixer_kind == "cross_attention"]
    if not cross:
        raise ValueError("this model has no cross-attention layers: its image is in the residual stream at the image "
                         "positions, so use the position-based analyses (span_ablation, attention_knockout, ...)")
    if layers is None:
        return cross
    layers = [layers] if isinstance(layers, int) else list(layers)
    bad = [l for l in layers if l not in cross]
    if bad:
        raise ValueError(f"layers {bad} are not cross-attention layers (those are {cross}): the image keys are read "
                         "only there")
    return layers


def refuse_image_positions(model: Any, span: Any, what: str, instead: str) -> None:
    """Raise when a position-based analysis names the image of a model whose image is only in the keys."""
    names = [span] if isinstance(span, str) else list(span) if isinstance(span, (list, tuple)) else []
    if getattr(model.cfg.text, "cross_attention", None) is not None and any(
            isinstance(n, str) and n.startswith("image") for n in names):
        raise ValueError(f"{what} on span {span!r}: in this cross-attention model the image is not at any text "
                         "position (the 'image' positions are the <|image|> placeholders, plain token embeddings); "
                         f"its content is in the cross-attention keys: use {instead} (hooked_vlm.analysis.cross_attention)")


def key_mask(kv_spans: KeySpans | None, keys: KeyLike) -> Tensor:
    """Bool [batch, key] of the keys ``keys`` selects."""
    if kv_spans is None:
        raise ValueError("this forward has no image keys (no pixel_values): nothing to select on the key axis")
    if isinstance(keys, Tensor):
        if keys.dtype != torch.bool or tuple(keys.shape) != (kv_spans.batch, kv_spans.n_keys):
            raise ValueError(f"a key mask must be bool [batch, key] = {(kv_spans.batch, kv_spans.n_keys)}, got "
                             f"{keys.dtype} {tuple(keys.shape)}")
        return keys.to(kv_spans.grid.device)
    if isinstance(keys, str):
        return kv_spans.mask(keys)
    out = torch.zeros(kv_spans.batch, kv_spans.n_keys, dtype=torch.bool, device=kv_spans.grid.device)
    for name in keys:
        out |= kv_spans.mask(name)
    return out


def _kv_spans(hook: Any) -> KeySpans:
    return hook.run.extra.get("kv_spans")


# ------------------------------------------------------------------ knockout through the cross-attention mask
def key_knockout_hook(keys: KeyLike = "image", queries: SpanLike = "text") -> Callable:
    """A ``cross_attn.hook_mask`` hook (bool [batch, 1, q_pos, key]) masking ``keys`` for the ``queries`` rows."""

    def knockout(mask: Tensor, hook: Any) -> Tensor:
        rows = span_mask(hook.spans, queries)[:, hook.run.query_positions.to(hook.spans.grid.device)]  # [batch, q]
        cols = key_mask(_kv_spans(hook), keys)  # [batch, key]
        blocked = (rows[:, :, None] & cols[:, None, :])[:, None].to(mask.device)
        return mask & ~blocked

    return knockout


def cross_knockout_hooks(model: Any, keys: KeyLike = "image", queries: SpanLike = "text",
                         layers: Sequence[int] | int | None = None) -> list[tuple[str, Callable]]:
    fn = key_knockout_hook(keys, queries)
    return [(f"blocks.{l}.cross_attn.hook_mask", fn) for l in cross_layers(model, layers)]


def cross_attention_knockout(model: Any, inputs: dict, keys: KeyLike = "image", queries: SpanLike = "text",
                             layers: Sequence[int] | int | None = None) -> Tensor:
    """Logits with ``keys`` -> ``queries`` cross-attention knocked out in ``layers`` (default every cross layer)."""
    return forward_with_hooks(model, inputs, cross_knockout_hooks(model, keys, queries, layers))


# ------------------------------------------------------------------ ablation / patching / steering at the keys
def key_ablation_hook(keys: KeyLike = "image", how: str = "zero") -> Callable:
    """A ``hook_image_embeds`` hook ([batch, key, d_model]): ``keys`` set to zero or to their mean (per batch item)."""
    if how not in ("zero", "mean"):
        raise ValueError(f"how must be 'zero' or 'mean', got {how!r}")

    def ablate(x: Tensor, hook: Any) -> Tensor:
        sel = key_mask(_kv_spans(hook), keys).to(x.device)[..., None]  # [batch, key, 1]
        if how == "zero":
            return x.masked_fill(sel, 0.0)
        mean = (x * sel).sum(1, keepdim=True) / sel.sum(1, keepdim=True).clamp(min=1)
        return torch.where(sel, mean, x)

    return ablate


def key_ablation(model: Any, inputs: dict, keys: KeyLike = "image", how: str = "zero") -> Tensor:
    cross_layers(model)
    return forward_with_hooks(model, inputs, [("hook_image_embeds", key_ablation_hook(keys, how))])


def key_patching(model: Any, target_inputs: dict, source_inputs: dict, keys: KeyLike = "image") -> Tensor:
    """Logits of ``target_inputs`` whose image features at ``keys`` are replaced by ``source_inputs``' (which must
    have the same key layout: batch, images and tiles)."""
    cross_layers(model)
    _, src = model.run_with_cache(**source_inputs, names_filter="hook_image_embeds")
    source = src["hook_image_embeds"]

    def patch(x: Tensor, hook: Any) -> Tensor:
        if source.shape != x.shape:
            raise ValueError(f"the source's image features {tuple(source.shape)} do not match the target's "
                             f"{tuple(x.shape)}: patching at the keys needs the same batch, images and tiles")
        sel = key_mask(_kv_spans(hook), keys).to(x.device)[..., None]
        return torch.where(sel, source.to(x.device, x.dtype), x)

    return forward_with_hooks(model, target_inputs, [("hook_image_embeds", patch)])


def key_steering(model: Any, inputs: dict, direction: Tensor, keys: KeyLike = "image", alpha: float = 1.0) -> Tensor:
    """Logits with ``alpha * direction`` [d_model] added to the image features at ``keys``."""
    cross_layers(model)
    if direction.shape != (model.cfg.d_model,):
        raise ValueError(f"direction must be [d_model] = [{model.cfg.d_model}], got {tuple(direction.shape)}")

    def steer(x: Tensor, hook: Any) -> Tensor:
        sel = key_mask(_kv_spans(hook), keys).to(x.device)[..., None]
        return x + alpha * sel * direction.to(x.device, x.dtype)

    return forward_with_hooks(model, inputs, [("hook_image_embeds", steer)])


# ------------------------------------------------------------------ attention flow over keys, logit lens on keys
@torch.no_grad()
def cross_attention_flow(model: Any, inputs: dict, queries: SpanLike = "last", roles: Sequence[str] | None = None,
                         layers: Sequence[int] | int | None = None) -> dict[int, Tensor]:
    """{layer: [batch, head, role]}: the mean over the ``queries`` rows of each row's attention mass on each key role
    (default roles: every ``image.{i}`` of the input, then ``padding``). Rows with no query in a batch item give NaN.
    Rows that see no image attend to EVERY key under HF's rule (docs/cross_attention.md): name their span to read them."""
    cross = cross_layers(model, layers)
    names = [f"blocks.{l}.cross_attn.hook_pattern" for l in cross]
    _, cache = model.run_with_cache(**inputs, names_filter=names)
    kv = cache.kv_spans
    roles = list(roles) if roles is not None else [n for n in kv.names if n.startswith("image.")] + ["padding"]
    role_keys = torch.stack([key_mask(kv, r) for r in roles], -1).float()  # [batch, key, role]
    rows = span_mask(cache.spans, queries).float()  # [batch, q]
    out = {}
    for l, name in zip(cross, names):
        pattern = cache[name].float()  # [batch, head, q, key]
        mass = torch.einsum("bhqk,bkr->bhqr", pattern, role_keys.to(pattern.device))
        out[l] = torch.einsum("bhqr,bq->bhr", mass, rows.to(pattern.device)) / rows.sum(1)[:, None, None]
    return out


@torch.no_grad()
def key_logit_lens(model: Any, inputs: dict) -> Tensor:
    """[batch, key, d_vocab]: ``unembed(ln_final(x))`` of the projected image features x at every key (what this
    reads: see the module docstring; padding keys included, select with ``cache.kv_spans``)."""
    cross_layers(model)
    _, cache = model.run_with_cache(**inputs, names_filter="hook_image_embeds")
    return model.unembed(model.ln_final(cache["hook_image_embeds"]))


# ------------------------------------------------------------------ direct logit attribution through cross heads
@dataclass
class CrossAttributionResult:
    """``attribution[b, i, h, k]``: the direct effect on the target logit (or difference) at the query row of head
    ``h`` of cross-attention layer ``layers[i]`` reading key ``k``; ``attn_total[b, i]`` the same projection of the
    layer's whole (gated) ``hook_attn_out``, which the attribution sums to (the output projection has no bias).
    ``kv_spans.to_grid(attribution[b, i, h], image)`` draws it on the image."""

    attribution: Tensor  # [batch, cross layer, head, key]
    attn_total: Tensor  # [batch, cross layer]
    layers: list[int]
    query_positions: Tensor  # [batch]
    kv_spans: KeySpans


@torch.no_grad()
def cross_patch_attribution(model: Any, inputs: dict, target: Any, query: SpanLike = "last",
                            layers: Sequence[int] | int | None = None) -> CrossAttributionResult:
    """Per (cross layer, head, image key): ``tanh(attn_gate) * pattern[h, q, k] * (v[k, kv(h)] @ W_O[h]) .
    (w_final * W_U[:, t]) / scale_final[q]``, the final norm's scale frozen at its value in the run (as
    :func:`~hooked_vlm.analysis.attribution.patch_attribution` does for positions)."""
    from .attribution import _one_query, target_ids, through_norm, unembed_direction

    cross = cross_layers(model, layers)
    names = ["ln_final.hook_scale"]
    for l in cross:
        names += [f"blocks.{l}.cross_attn.hook_v", f"blocks.{l}.cross_attn.hook_pattern", f"blocks.{l}.hook_attn_out"]
    _, cache = model.run_with_cache(**inputs, names_filter=names)
    q = _one_query(cache.spans, [query] if isinstance(query, int) else query)
    b = q.shape[0]
    rows = torch.arange(b)
    d = through_norm(unembed_direction(model, target_ids(model, target, b)), model.ln_final)  # [batch, d_model]
    scale = cache["ln_final.hook_scale"][rows, q, 0].float()
    out, totals = [], []
    for l in cross:
        mixer = model.blocks[l].cross_attn
        n_rep = mixer.cfg.n_heads // mixer.cfg.n_key_value_heads
        gate = model.blocks[l].attn_gate.tanh().float() if model.blocks[l].gated else 1.0
        wo_dir = einsum("head d_head d_model, batch d_model -> batch head d_head", mixer.W_O.float(), d)
        v = cache[f"blocks.{l}.cross_attn.hook_v"].float().repeat_interleave(n_rep, dim=2)  # [batch, key, head, dh]
        per_key = einsum("batch key head d_head, batch head d_head -> batch head key", v, wo_dir)
        pattern = cache[f"blocks.{l}.cross_attn.hook_pattern"][rows, :, q].float()  # [batch, head, key]
        out.append(gate * pattern * per_key / scale[:, None, None])
        totals.append((cache[f"blocks.{l}.hook_attn_out"][rows, q].float() * d).sum(-1) / scale)
    return CrossAttributionResult(torch.stack(out, 1), torch.stack(totals, 1), cross, q, cache.kv_spans)
