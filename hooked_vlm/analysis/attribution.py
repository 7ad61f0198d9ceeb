"""Per-patch direct logit attribution: how much each source position adds to a target logit, per head.

For the query row ``q`` (default: the ``last`` position) and every layer ``l``, head ``h`` and source
position ``s``, the attention head moves ``pattern[h, q, s] * v[s, kv(h)] @ W_O[h]`` into the residual
stream (``kv(h) = h // (n_heads / n_kv_heads)`` under GQA). Its *direct* effect on the logit of the
target token ``t`` is that vector read by the unembedding the way the final residual is read::

    attribution[l, h, s] = pattern[h, q, s] * (v[s, kv(h)] @ W_O[h]) . (w_final * W_U[:, t]) / scale_final[q]

with the final norm's scale FROZEN at its value in the run (TransformerLens's
``ActivationCache.apply_ln_to_stack`` + ``logit_attrs``: divide the stack by the cached
``ln_final.hook_scale`` and dot it with the unembedding direction). We do not fold the norm weight
into ``W_U``, so the weight is applied here (Gemma's ``1 + w`` included; ``hooked_vlm.tl_cache`` does the same
for the cache's helpers); with a LayerNorm the
direction is centred (the norm's mean subtraction is linear). A pair ``target=(a, b)`` gives the
logit difference ``logit(a) - logit(b)`` (direction ``W_U[:, a] - W_U[:, b]``).

What else the result carries (all projected the same way, at the query):

* ``bias[l]``: the output-projection bias (and a post-attention LayerNorm's bias), which no source owns;
* ``attn_total[l]``: ``blocks.{l}.hook_attn_out`` projected. ``attribution[l].sum() + bias[l] == attn_total[l]``
  (a check computed from a different activation, see the tests);
* ``embed_total`` / ``mlp_total[l]``: the other direct terms. For RMS final norms (every family we
  convert) ``embed_total + attn_total.sum() + mlp_total.sum()`` equals ``logit`` (the target logit, or
  difference, *before* final soft-capping) up to DeepStack features (Qwen3-VL), which are added outside
  the blocks' hooks.

Post-attention norms (Gemma's sandwich ``ln1_post``, Swin-style ``post_sublayer``) rescale the whole
attention output by its own RMS, a non-linear function of all heads together. We freeze that scale
too (the same linearisation as the final norm's), so the per-source terms still sum exactly to
``hook_attn_out``; ``frozen_norms`` on the result names every norm whose scale was frozen.
Final-logit soft-capping (``cfg.text.final_logit_softcap``, Gemma 2) is not linear and has no frozen
form: the attribution is to the logit *before* capping (``softcap`` on the result says so).

Gated attention (Qwen3.5 ``attn_output_gate``): the gate depends on the query only, so each source's term is
``pattern[h, q, s] * (v[s] * sigmoid(gate[q, h])) @ W_O[h]`` -- still exact. Layers without attention (Gated DeltaNet,
short convolutions) have no per-source split of their output: with ``layers=None`` they are left out (zero in
``attribution`` and ``bias``; their whole output is in ``attn_total``) and listed in ``undecomposed`` {layer: kind};
naming one raises (docs/hybrid_models.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import einops
import torch
from fancy_einsum import einsum
from jaxtyping import Float, Int
from torch import Tensor

from ._common import SpanLike, forward_with_hooks, span_mask
from .layer_kinds import attention_layers
from ..spans import TokenSpans

TargetLike = Any  # int | str | (a, b) | Tensor [batch] | Tensor [batch, 2]


@dataclass
class PatchAttributionResult:
    """Direct logit attribution of every (layer, head, source position) at one query row per batch item.

    ``attribution[b]`` is [layer, head, position]; positions are the full (padded) sequence, zero
    where the query cannot attend (later positions, padding)."""

    attribution: Float[Tensor, "batch layer head pos"]
    bias: Float[Tensor, "batch layer"]
    attn_total: Float[Tensor, "batch layer"]
    mlp_total: Float[Tensor, "batch layer"]
    embed_total: Float[Tensor, " batch"]
    logit: Float[Tensor, " batch"]  # target logit (or difference) at the query, before soft-capping
    query_positions: Int[Tensor, " batch"]
    target_ids: Int[Tensor, "batch k"]  # k = 1 (a logit) or 2 (logit(a) - logit(b))
    spans: TokenSpans
    softcap: float | None = None
    frozen_norms: list[str] = field(default_factory=list)
    tokenizer: Any = None
    undecomposed: dict[int, str] = field(default_factory=dict)  # layers without attention (hybrids): layer -> kind

    @property
    def target_label(self) -> str:
        """'logit(red)' or 'logit(red) - logit(blue)' for batch item 0 (ids when there is no tokenizer)."""
        names = [str(i) for i in self.target_ids[0].tolist()]
        if self.tokenizer is not None:
            names = self.tokenizer.convert_ids_to_tokens(self.target_ids[0].tolist())
        return " - ".join(f"logit({n})" for n in names)

    def per_position(self, batch: int = 0, layers: Sequence[int] | None = None,
                     heads: Sequence[int] | None = None) -> Float[Tensor, " pos"]:
        """Sum over ``layers`` and ``heads`` (default all) of one item's attribution, per source position."""
        a = self.attribution[batch]
        if layers is not None:
            a = a[list(layers)]
        if heads is not None:
            a = a[:, list(heads)]
        return einops.reduce(a, "layer head pos -> pos", "sum")

    def share(self, span: SpanLike, within: SpanLike = "image", batch: int = 0) -> float:
        """Fraction of the attribution summed over ``within`` that sits on ``span`` (both span-likes).

        Signed sums: a value above 1 means the rest of ``within`` pushes against the target."""
        per = self.per_position(batch)
        inside = span_mask(self.spans, within)[batch].to(per.device)
        sel = span_mask(self.spans, span)[batch].to(per.device) & inside
        total = per[inside].sum()
        if float(total) == 0.0:
            raise ValueError(f"the attribution summed over {within!r} is 0; a share of it is undefined")
        return float(per[sel].sum() / total)

    def to_grid(self, batch: int = 0, image: int = 0, tile: int = 0, by: str = "total",
                layers: Sequence[int] | None = None, heads: Sequence[int] | None = None) -> Tensor:
        """One image's attribution on its patch grid (NaN off the image).

        ``by="total"``: [rows, cols] summed over ``layers`` / ``heads``; ``"layer"``: [layer, rows, cols]
        (summed over heads); ``"head"``: [layer, head, rows, cols]."""
        a = self.attribution[batch]
        if by == "total":
            return self.spans.to_grid(self.per_position(batch, layers, heads), image=image, batch=batch, tile=tile)
        if by == "layer":
            per = einops.rearrange(einops.reduce(a, "layer head pos -> layer pos", "sum"), "layer pos -> pos layer")
            return einops.rearrange(self.spans.to_grid(per, image=image, batch=batch, tile=tile), "r c layer -> layer r c")
        if by == "head":
            per = einops.rearrange(a, "layer head pos -> pos layer head")
            return einops.rearrange(self.spans.to_grid(per, image=image, batch=batch, tile=tile),
                                    "r c layer head -> layer head r c")
        raise ValueError(f"by must be 'total', 'layer' or 'head', got {by!r}")

    def to_dataframe(self, batch: int = 0) -> Any:
        """Tidy DataFrame of one item: layer, head, position, role ('image' / 'text' / ...), row, col, attribution."""
        import pandas as pd

        L, H, P = self.attribution.shape[1:]
        g = self.spans.grid[batch].cpu()
        image = self.spans.mask("image")[batch].cpu()
        grid = lambda t: einops.repeat(t, "pos -> (layer head pos)", layer=L, head=H).numpy()  # noqa: E731
        return pd.DataFrame({
            "layer": einops.repeat(torch.arange(L), "layer -> (layer head pos)", head=H, pos=P).numpy(),
            "head": einops.repeat(torch.arange(H), "head -> (layer head pos)", layer=L, pos=P).numpy(),
            "position": grid(torch.arange(P)), "is_image": grid(image), "image": grid(g[:, 0]),
            "row": grid(g[:, 2]), "col": grid(g[:, 3]),
            "attribution": self.attribution[batch].reshape(-1).float().cpu().numpy(),
        })

    def plot(self, image: Any = None, batch: int = 0, image_index: int = 0, by: str = "layer", alpha: float = 0.6,
             cmap: str = "RdBu_r") -> Any:
        """The per-patch attribution on the image grid: one panel per layer (``by="layer"``, summed over
        heads) plus their total, or a layer x head grid (``by="head"``). A diverging colour scale centred on 0
        (red pushes the target up); ``image`` (PIL/array, as the model saw it) is drawn under the grid."""
        import matplotlib.pyplot as plt
        import numpy as np

        total = self.to_grid(batch, image_index, by="total").numpy()
        if by == "layer":
            grids = self.to_grid(batch, image_index, by="layer").numpy()
            panels = [[(f"layer {l}", grids[l]) for l in range(len(grids))] + [("all layers", total)]]
        elif by == "head":
            grids = self.to_grid(batch, image_index, by="head").numpy()
            panels = [[(f"L{l} H{h}", grids[l, h]) for h in range(grids.shape[1])] for l in range(grids.shape[0])]
        else:
            raise ValueError(f"by must be 'layer' or 'head', got {by!r}")
        vmax = max(float(np.nanmax(np.abs(np.stack([p for row in panels for _, p in row])))), 1e-12)
        nrows, ncols = len(panels), max(len(r) for r in panels)
        fig, axes = plt.subplots(nrows, ncols, figsize=(2.3 * ncols + 0.8, 2.3 * nrows + 0.6), squeeze=False)
        im = None
        for r, row in enumerate(panels):
            for c in range(ncols):
                ax = axes[r, c]
                if c >= len(row):
                    ax.axis("off")
                    continue
                title, grid = row[c]
                rows, cols = grid.shape
                if image is not None:
                    ax.imshow(np.asarray(image), extent=(0, cols, rows, 0))
                im = ax.imshow(grid, extent=(0, cols, rows, 0), alpha=alpha if image is not None else 1.0, cmap=cmap,
                               vmin=-vmax, vmax=vmax)
                ax.set_title(title, fontsize=8)
                ax.set_xlabel("patch column", fontsize=7)
                if c == 0:
                    ax.set_ylabel("patch row", fontsize=7)
                ax.tick_params(labelsize=6)
        fig.subplots_adjust(wspace=0.25, hspace=0.45)
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="direct attribution (logit units)")
        fig.suptitle(f"per-patch direct logit attribution through attention: {self.target_label} "
                     f"(query position {int(self.query_positions[batch])})", fontsize=9)
        return fig


def target_ids(model: Any, target: TargetLike, batch: int) -> Int[Tensor, "batch k"]:
    """[batch, 1] (one token) or [batch, 2] (a logit difference) ids from an int / str / pair / tensor."""
    def one(t: Any) -> int:
        return model.to_single_token(t) if isinstance(t, str) else int(t)

    if isinstance(target, Tensor):
        t = target.to(torch.long)
        t = t[:, None] if t.ndim == 1 and len(t) == batch and batch > 1 else t
        t = t.reshape(1, -1) if t.ndim <= 1 else t
    elif isinstance(target, (tuple, list)):
        t = torch.tensor([[one(x) for x in target]])
    else:
        t = torch.tensor([[one(target)]])
    if t.ndim != 2 or t.shape[1] not in (1, 2) or t.shape[0] not in (1, batch):
        raise ValueError(f"target must be a token (id or string), a pair (a, b) for logit(a) - logit(b), or a tensor "
                         f"[batch] / [batch, 2] (batch = {batch}); got shape {tuple(t.shape)}")
    bad = t[(t < 0) | (t >= model.cfg.d_vocab)]
    if len(bad):
        raise ValueError(f"target ids {bad.tolist()} are outside the vocabulary (0..{model.cfg.d_vocab - 1})")
    return t.expand(batch, -1).to(model.device)


def unembed_direction(model: Any, ids: Int[Tensor, "batch k"]) -> Float[Tensor, "batch d_model"]:
    """W_U[:, a] (or W_U[:, a] - W_U[:, b]) per batch item, float32."""
    W_U = model.W_U.float()
    d = W_U[:, ids[:, 0]].T
    return d - W_U[:, ids[:, 1]].T if ids.shape[1] == 2 else d


def norm_parts(norm: Any) -> tuple[Tensor, bool, Tensor | None]:
    """(the weight the norm applies, whether it centres (LayerNorm), its bias) of one of our norms."""
    w = norm.w.float() + float(getattr(norm, "weight_offset", 0.0) or 0.0)
    return w, bool(getattr(norm, "center", False)), (None if getattr(norm, "b", None) is None else norm.b.float())


def through_norm(direction: Float[Tensor, "batch d"], norm: Any) -> Float[Tensor, "batch d"]:
    """The direction ``u`` such that ``x . u / scale`` is ``norm(x) . direction`` minus the bias term, for a frozen
    scale: ``w * direction``, centred when the norm is a LayerNorm (its mean subtraction is linear)."""
    w, center, _ = norm_parts(norm)
    u = direction * w
    return u - u.mean(-1, keepdim=True) if center else u


def post_attention_norm(model: Any, layer: int) -> tuple[str, Any] | None:
    """(name, module) of the norm applied to block ``layer``'s attention OUTPUT, or None (pre-norm blocks)."""
    block = model.blocks[layer]
    placement = model.cfg.text.norm_placement
    if placement == "sandwich":
        return f"blocks.{layer}.ln1_post", block.ln1_post
    if placement == "post_sublayer":
        return f"blocks.{layer}.ln1", block.ln1
    if placement != "pre":
        raise NotImplementedError(f"patch_attribution does not know norm_placement {placement!r}")
    return None


def _one_query(spans: TokenSpans, query: SpanLike) -> Int[Tensor, " batch"]:
    m = span_mask(spans, query)
    n = m.sum(1)
    if not bool((n == 1).all()):
        raise ValueError(f"query {query!r} must select exactly one position per batch item; it selects "
                         f"{n.tolist()} (use 'last', an int position, or a one-position span)")
    return m.float().argmax(1)


@torch.no_grad()
def patch_attribution(model: Any, inputs: dict, target: TargetLike, query: SpanLike | int = "last",
                      layers: Sequence[int] | None = None) -> PatchAttributionResult:
    """Direct attribution of the target logit (or logit difference) to each (layer, head, source position).

    ``target``: a token id or single-token string, a pair ``(a, b)`` for ``logit(a) - logit(b)``, or a
    tensor [batch] / [batch, 2] of per-item ids. ``query``: the row whose logit is explained (a span
    name selecting one position per item, or an int position). One forward with hooks; the explicit
    attention path is used (it gives the same numbers as the fast one). ``layers``: which layers to
    decompose (default all; the others are 0 in ``attribution`` and ``bias``).
    """
    n_layers, H = model.cfg.n_layers, model.cfg.text.n_heads
    n_rep = H // model.cfg.text.n_key_value_heads
    chosen, undecomposed = attention_layers(model, layers, "patch_attribution (a per-source split of attention)")
    wanted = set(chosen)
    if isinstance(query, int):
        query = [query]
    state: dict[str, Any] = {}
    per_layer: dict[int, Tensor] = {}
    post_scales: dict[int, Tensor] = {}
    attn_out: dict[int, Tensor] = {}
    mlp_out: dict[int, Tensor] = {}

    def rows(t: Tensor) -> Tensor:  # the query row of every batch item of a [batch, pos, ...] activation
        return t[torch.arange(t.shape[0], device=t.device), state["q"]]

    def start(x: Tensor, hook: Any) -> None:
        b = x.shape[0]
        state["q"] = _one_query(hook.spans, query).to(x.device)
        state["spans"] = hook.spans
        state["ids"] = target_ids(model, target, b)
        state["dir"] = through_norm(unembed_direction(model, state["ids"]), model.ln_final)  # [batch, d_model]
        state["embed"] = rows(x)

    def grab_v(v: Tensor, hook: Any, layer: int) -> None:
        state[f"v{layer}"] = v

    def grab_gate(gate: Tensor, hook: Any, layer: int) -> None:  # gated attention: sigmoid(gate) at the query row
        state[f"g{layer}"] = torch.sigmoid(rows(gate).float())  # [batch, head, d_head]

    def grab_pattern(pattern: Tensor, hook: Any, layer: int) -> None:
        post = post_attention_norm(model, layer)
        d = state["dir"] if post is None else through_norm(state["dir"], post[1])
        W_O = model.blocks[layer].attn.W_O.float()  # [head, d_head, d_model]
        wo_dir = einsum("head d_head d_model, batch d_model -> batch head d_head", W_O, d)
        if f"g{layer}" in state:
            wo_dir = wo_dir * state.pop(f"g{layer}")
        v = einops.repeat(state.pop(f"v{layer}").float(), "batch pos kv d_head -> batch pos (kv rep) d_head", rep=n_rep)
        per_source = einsum("batch pos head d_head, batch head d_head -> batch head pos", v, wo_dir)
        q_row = pattern[torch.arange(pattern.shape[0], device=pattern.device), :, state["q"]].float()  # [b, head, k]
        per_layer[layer] = q_row * per_source

    def grab_post_scale(scale: Tensor, hook: Any, layer: int) -> None:
        post_scales[layer] = rows(scale)[:, 0].float()

    def grab_out(x: Tensor, hook: Any, layer: int, into: dict) -> None:
        into[layer] = rows(x).float()

    def grab_final(scale: Tensor, hook: Any) -> None:
        state["scale"] = rows(scale)[:, 0].float()

    def grab_normalized(x: Tensor, hook: Any) -> None:
        state["normalized"] = rows(x).float()

    hooks: list = [("hook_embed", start)]
    frozen = ["ln_final"]
    for l in range(n_layers):
        if l in wanted:
            hooks += [(f"blocks.{l}.attn.hook_v", lambda t, hook, l=l: grab_v(t, hook, l)),
                      (f"blocks.{l}.attn.hook_pattern", lambda t, hook, l=l: grab_pattern(t, hook, l))]
            if model.blocks[l].attn.gated:
                hooks.append((f"blocks.{l}.attn.hook_gate", lambda t, hook, l=l: grab_gate(t, hook, l)))
        post = post_attention_norm(model, l)
        if post is not None:
            hooks.append((f"{post[0]}.hook_scale", lambda t, hook, l=l: grab_post_scale(t, hook, l)))
            frozen.append(post[0])
        hooks += [(f"blocks.{l}.hook_attn_out", lambda t, hook, l=l: grab_out(t, hook, l, attn_out)),
                  (f"blocks.{l}.hook_mlp_out", lambda t, hook, l=l: grab_out(t, hook, l, mlp_out))]
    hooks += [("ln_final.hook_scale", grab_final), ("ln_final.hook_normalized", grab_normalized)]
    forward_with_hooks(model, inputs, hooks, return_type=None)

    d, scale = state["dir"], state["scale"]
    b, P = len(state["q"]), state["spans"].seq_len
    attribution = torch.zeros(b, n_layers, H, P, device=d.device)
    bias = torch.zeros(b, n_layers, device=d.device)
    for l in range(n_layers):
        post = post_attention_norm(model, l)
        b_O = model.blocks[l].mixer.b_O.float()
        if post is None:
            bias[:, l] = d @ b_O
        else:
            bias[:, l] = (through_norm(d, post[1]) @ b_O) / post_scales[l]
            post_b = norm_parts(post[1])[2]
            if post_b is not None:  # a post-attention LayerNorm's own bias is added after its (frozen) scale
                bias[:, l] += d @ post_b
        if l in per_layer:
            attribution[:, l] = per_layer[l] / (1.0 if post is None else post_scales[l][:, None, None])
    attribution = attribution / scale[:, None, None, None]
    bias = bias / scale[:, None]
    project = lambda x: (x * d).sum(-1) / scale  # noqa: E731
    ids = state["ids"]
    W_U = model.W_U.float()
    logit = (state["normalized"] * W_U[:, ids[:, 0]].T).sum(-1)
    if ids.shape[1] == 2:
        logit = logit - (state["normalized"] * W_U[:, ids[:, 1]].T).sum(-1)
    bias = bias * torch.tensor([l in wanted for l in range(n_layers)], device=bias.device)
    return PatchAttributionResult(
        attribution=attribution.cpu(), bias=bias.cpu(),
        attn_total=torch.stack([project(attn_out[l]) for l in range(n_layers)], 1).cpu(),
        mlp_total=torch.stack([project(mlp_out[l]) for l in range(n_layers)], 1).cpu(),
        embed_total=project(state["embed"].float()).cpu(), logit=logit.cpu(), query_positions=state["q"].cpu(),
        target_ids=ids.cpu(), spans=state["spans"], softcap=model.cfg.text.final_logit_softcap, frozen_norms=frozen,
        tokenizer=getattr(model, "tokenizer", None), undecomposed=undecomposed)
