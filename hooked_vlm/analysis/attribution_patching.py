"""Attribution patching (Nanda 2023): a linear estimate of every (layer, position) activation-patching effect.

Activation patching copies one activation of a *clean* run into a *corrupt* run and measures how a
metric moves: ``metric(corrupt with act[l, p] := clean) - metric(corrupt)``: one forward per
(hook, layer, position). Attribution patching replaces each of those forwards by the first-order
Taylor term around the corrupt run::

    effect[l, p] ~= grad_corrupt(metric)[l, p] . (act_clean[l, p] - act_corrupt[l, p])

summed over the activation's trailing dimensions (d_model; head x d_head for ``z``). That needs
two forwards (clean, corrupt) and one backward (on the corrupt run), whatever the number of
layers, positions and hook types. It is exact where the metric is linear in the patched
activation (e.g. a logit difference and ``ln_final.hook_normalized``) and an approximation
elsewhere: :func:`exact_patching` computes the real effects (one forward each) to check it, and
:func:`rank_correlation` compares the two.

Hook types: keys of :data:`~hooked_vlm.analysis.patching.SITES` (``resid_pre``, ``attn_out``,
``mlp_out``, ``resid_mid``, ``resid_post``, ``attn_in``, ``mlp_in``, ``z``), a template with ``{l}``,
or a single hook name (one "layer"). The activation must be laid out [batch, pos, ...].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import einops
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from ._common import forward_with_hooks, layer_list, spans_of
from .patching import SITES, activation_patching, last_logits, logit_diff, source_activations
from ..spans import TokenSpans
from ..summary import summary_repr

Metric = Callable[[Tensor], Tensor]  # logits [batch, pos, vocab] -> [batch] (or a scalar)
NOT_POSITIONAL = ("hook_pattern", "hook_attn_scores", "hook_mask", "hook_tap_mask", "hook_image_embeds", "hook_router_logits")


@dataclass
class AttributionPatchingResult:
    """Per hook type, the patching effect of every (layer, position): ``effects[hook]`` is [batch, layer, pos]."""

    __repr__ = summary_repr  # a short summary, not the tensors (hooked_vlm.summary)

    effects: dict[str, Float[Tensor, "batch layer pos"]]
    layers: dict[str, list[int]]  # per hook type, the layer of each row ([-1] for a single hook name)
    clean_metric: Float[Tensor, " batch"]
    corrupt_metric: Float[Tensor, " batch"]
    spans: TokenSpans
    method: str  # "attribution" (the linear estimate) or "exact" (one patched forward per entry)

    def to_grid(self, hook: str, layer: int, batch: int = 0, image: int = 0, tile: int = 0) -> Float[Tensor, "rows cols"]:
        """The effect of patching each image position at (``hook``, ``layer``) on its patch grid (NaN off the image)."""
        row = self.layers[hook].index(layer)
        return self.spans.to_grid(self.effects[hook][batch, row], image=image, batch=batch, tile=tile)

    def to_dataframe(self) -> Any:
        """Tidy DataFrame: hook, layer, batch, position, is_image, effect, method."""
        import pandas as pd

        frames = []
        for hook, eff in self.effects.items():
            B, L, P = eff.shape
            frames.append(pd.DataFrame({
                "hook": hook,
                "layer": einops.repeat(torch.tensor(self.layers[hook]), "l -> (b l p)", b=B, p=P).numpy(),
                "batch": einops.repeat(torch.arange(B), "b -> (b l p)", l=L, p=P).numpy(),
                "position": einops.repeat(torch.arange(P), "p -> (b l p)", b=B, l=L).numpy(),
                "is_image": einops.repeat(self.spans.mask("image").cpu(), "b p -> (b l p)", l=L).numpy(),
                "effect": eff.reshape(-1).float().numpy(), "method": self.method}))
        return pd.concat(frames, ignore_index=True)

    def plot(self, batch: int = 0, str_tokens: Sequence[str] | None = None, cmap: str = "RdBu_r") -> Any:
        """One heatmap per hook type: layer x position, diverging colours centred on 0, with a colour bar."""
        import matplotlib.pyplot as plt

        hooks = list(self.effects)
        P = self.spans.seq_len
        fig, axes = plt.subplots(len(hooks), 1, figsize=(min(0.18 * P + 2, 24), 1.2 + 0.45 * sum(len(self.layers[h])
                                                                                                  for h in hooks)),
                                 squeeze=False)
        what = "linear estimate" if self.method == "attribution" else "exact"
        for ax, hook in zip(axes[:, 0], hooks):
            eff = self.effects[hook][batch].float().numpy()
            vmax = max(float(abs(eff).max()), 1e-12)
            im = ax.imshow(eff, aspect="auto", cmap=cmap, vmin=-vmax, vmax=vmax, interpolation="nearest")
            ax.set_yticks(range(len(self.layers[hook])), [str(l) for l in self.layers[hook]], fontsize=7)
            ax.set_ylabel("layer", fontsize=8)
            ax.set_title(f"{hook}: patching effect on the metric ({what}), metric(patched) - metric(corrupt)",
                         fontsize=9)
            fig.colorbar(im, ax=ax, label="metric change")
            if str_tokens is not None:
                ax.set_xticks(range(P), list(str_tokens), rotation=90, fontsize=5)
        axes[-1, 0].set_xlabel("position (patched from the clean run)", fontsize=8)
        fig.tight_layout()
        return fig


def last_logit_diff_metric(model: Any, inputs: dict, tokens: Sequence[int] | Tensor) -> Metric:
    """``logits -> logit(a) - logit(b)`` at each item's ``last`` position (``tokens``: (a, b) or [batch, 2])."""
    spans = spans_of(model, inputs)
    t = torch.as_tensor(tokens, dtype=torch.long, device=model.device)
    return lambda logits: logit_diff(last_logits(logits, spans), t)


def hook_templates(model: Any, hooks: Sequence[str], layers: Sequence[int] | None) -> dict[str, list[tuple[int, str]]]:
    """{hook type: [(layer, hook name), ...]} (layer -1 for a name without ``{l}``), checked against the model."""
    out = {}
    for h in hooks:
        template = SITES.get(h, h)
        if any(bad in template for bad in NOT_POSITIONAL):
            raise ValueError(f"hook {h!r} is not laid out [batch, pos, ...]; attribution patching patches positions "
                             f"(use one of {', '.join(SITES)} or a [batch, pos, ...] hook)")
        pairs = [(l, template.format(l=l)) for l in layer_list(model, layers)] if "{l}" in template else [(-1, template)]
        for _, name in pairs:
            model._resolve_hook_name(name)
        out[h] = pairs
    return out


def _check_pair(model: Any, clean: dict, corrupt: dict) -> TokenSpans:
    a, b = clean["input_ids"], corrupt["input_ids"]
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"clean and corrupt inputs must have the same shape (position p of one is patched into "
                         f"position p of the other); got input_ids {tuple(a.shape)} and {tuple(b.shape)}")
    ma, mb = clean.get("attention_mask"), corrupt.get("attention_mask")
    if (ma is None) != (mb is None) or (ma is not None and not torch.equal(ma.bool(), mb.bool())):
        raise ValueError("clean and corrupt inputs must have the same attention_mask (the same padding)")
    return spans_of(model, corrupt)


def _metric_vector(value: Tensor, batch: int) -> Tensor:
    if value.ndim == 0:
        return value.reshape(1).expand(batch) if batch == 1 else value.reshape(1)
    if value.shape != (batch,):
        raise ValueError(f"metric must return a scalar or one value per batch item [{batch}]; got {tuple(value.shape)}")
    return value


def attribution_patching(model: Any, clean: dict, corrupt: dict, metric: Metric, *,
                         hooks: Sequence[str] = ("resid_pre", "attn_out", "mlp_out"),
                         layers: Sequence[int] | None = None) -> AttributionPatchingResult:
    """Linear estimate of patching each (layer, position) of each hook type from ``clean`` into ``corrupt``.

    ``metric(logits)`` -> [batch] (or a scalar); the batch items are independent, so per-item gradients
    come from one backward of the sum. Two forwards and one backward; parameters get no ``.grad``.
    A scalar metric over a batch > 1 is attributed as a whole (effects of one item then include the
    others' terms only through that scalar).
    """
    spans = _check_pair(model, clean, corrupt)
    names = hook_templates(model, hooks, layers)
    all_names = sorted({n for pairs in names.values() for _, n in pairs})
    clean_acts: dict[str, Tensor] = {}

    def grab(act: Tensor, hook: Any) -> None:
        clean_acts[hook.name] = act.detach()

    with torch.no_grad():  # forward 1: the clean activations and metric
        clean_metric = _metric_vector(metric(forward_with_hooks(model, clean, [(n, grab) for n in all_names])),
                                      spans.batch)

    acts: dict[str, Tensor] = {}

    def keep(act: Tensor, hook: Any) -> Tensor:
        if act.ndim < 3 or act.shape[:2] != (spans.batch, spans.seq_len):
            raise ValueError(f"'{hook.name}' gives shape {tuple(act.shape)}, not [batch, pos, ...] = "
                             f"[{spans.batch}, {spans.seq_len}, ...]")
        if not act.requires_grad:  # parameters frozen (requires_grad_(False)): start the graph here
            act = act.detach().requires_grad_(True)
        acts[hook.name] = act
        return act

    with torch.enable_grad(), model.hooks(fwd_hooks=[(n, keep) for n in all_names]):  # forward 2 and the backward
        logits = model(**dict(corrupt))
        value = _metric_vector(metric(logits), spans.batch)
        grads = torch.autograd.grad(value.sum(), [acts[n] for n in all_names], allow_unused=True)
    corrupt_metric = value.detach()
    effects, layer_rows = {}, {}
    for h, pairs in names.items():
        rows = []
        for _, n in pairs:
            g = grads[all_names.index(n)]
            diff = (clean_acts[n] - acts[n].detach()).float()
            rows.append(torch.zeros(diff.shape[:2]) if g is None else
                        einops.reduce(g.float() * diff, "batch pos ... -> batch pos", "sum").cpu())
        effects[h] = torch.stack(rows, 1)
        layer_rows[h] = [l for l, _ in pairs]
    return AttributionPatchingResult(effects, layer_rows, clean_metric.float().cpu(), corrupt_metric.float().cpu(),
                                     spans, "attribution")


def _repeat(inputs: dict, k: int) -> dict:
    """``k`` copies of a batch, stacked along dim 0 (every tensor of the inputs is batch- or image-first)."""
    return {key: torch.cat([v] * k) if isinstance(v, Tensor) else v for key, v in dict(inputs).items()}


@torch.no_grad()
def exact_patching(model: Any, clean: dict, corrupt: dict, metric: Metric, *,
                   hooks: Sequence[str] = ("resid_pre", "attn_out", "mlp_out"),
                   layers: Sequence[int] | None = None, positions: Sequence[int] | None = None,
                   chunk: int = 16, progress: bool = True) -> AttributionPatchingResult:
    """The real effects attribution patching estimates: :func:`~hooked_vlm.analysis.patching.activation_patching`
    of ONE position (clean -> corrupt) per (hook type, layer, position), ``metric(patched) - metric(corrupt)``.

    ``chunk`` patched runs share one forward: the corrupt batch is repeated ``chunk`` times and copy ``j``
    patches its own position (a [batch, pos] span mask), so copies never interact; ``chunk=1`` is one
    forward per entry. Use ``chunk=1`` for inputs with a tensor that is not batch- or image-first (e.g.
    3-D M-RoPE ``position_ids``). ``positions``: which to patch (default all; the others stay 0)."""
    spans = _check_pair(model, clean, corrupt)
    B, P = spans.batch, spans.seq_len
    names = hook_templates(model, hooks, layers)
    all_names = sorted({n for pairs in names.values() for _, n in pairs})
    clean_acts = source_activations(model, clean, all_names, span=list(range(P)))
    clean_metric = _metric_vector(metric(forward_with_hooks(model, clean)), B)
    corrupt_metric = _metric_vector(metric(forward_with_hooks(model, corrupt)), B)
    positions = list(range(P)) if positions is None else list(positions)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    effects = {h: torch.zeros(B, len(pairs), P) for h, pairs in names.items()}
    layer_rows = {h: [l for l, _ in pairs] for h, pairs in names.items()}
    jobs = [(h, i, n, positions[c:c + chunk]) for h, pairs in names.items() for i, (_, n) in enumerate(pairs)
            for c in range(0, len(positions), chunk)]
    repeated: dict[int, dict] = {}
    for h, i, n, pos in tqdm(jobs, desc="exact patching", disable=not progress):
        k = len(pos)
        target = repeated.setdefault(k, _repeat(corrupt, k))
        span = torch.zeros(k * B, P, dtype=torch.bool, device=model.device)
        span[torch.arange(k * B), torch.tensor(pos).repeat_interleave(B)] = True  # copy j patches position pos[j]
        src = torch.cat([clean_acts[n][:, p:p + 1] for p in pos])  # [k * batch, 1, ...]
        logits = activation_patching(model, target, span=span, site=n, source_acts={n: src})
        for j, p in enumerate(pos):
            value = _metric_vector(metric(logits[j * B:(j + 1) * B]), B)
            effects[h][:, i, p] = (value - corrupt_metric).float().cpu()
    return AttributionPatchingResult(effects, layer_rows, clean_metric.float().cpu(), corrupt_metric.float().cpu(),
                                     spans, "exact")


def rank_correlation(estimate: AttributionPatchingResult, exact: AttributionPatchingResult, hook: str,
                     where: Tensor | None = None) -> float:
    """Spearman rank correlation of the two results' effects at ``hook`` over every (batch, layer, position)
    entry, or over the entries where the bool ``where`` ([batch, layer, pos]) is True."""
    import pandas as pd

    a, b = estimate.effects[hook], exact.effects[hook]
    if a.shape != b.shape:
        raise ValueError(f"the results cover different entries at {hook!r}: {tuple(a.shape)} vs {tuple(b.shape)}")
    if where is not None:
        a, b = a[where], b[where]
    return float(pd.Series(a.reshape(-1).numpy()).corr(pd.Series(b.reshape(-1).numpy()), method="spearman"))
