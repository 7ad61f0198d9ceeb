"""Logit lens over any span (default: the image tokens), chunked so memory stays bounded.

For each chosen layer the residual stream is read at the span's positions, put through the
final norm (``model.ln_final``: RMS/LayerNorm *including its learned weight*, i.e. exactly what
the unembedding reads at the last layer) and the unembedding, and reduced on the fly to top-k
tokens and the probability / rank of target tokens. Logits are never materialised beyond one
chunk of ``chunk_elems`` floats, so 32 layers x 576 image tokens x 32k vocabulary is fine.

Layer convention (TransformerLens ``accumulated_resid`` / HF ``hidden_states``): layer ``l`` in
``0..n_layers`` is the residual stream *entering* block ``l`` (``blocks.{l}.hook_resid_pre``);
``l = n_layers`` is the output of the last block, whose lens equals the model's logits.

Weight convention: our ``hook_scale`` is TL's (the divisor) and our ``ln_final`` applies its
weight, so the lens equals TL 4.3's ``cache.accumulated_resid(apply_ln=True) @ W_U`` (which
recomputes the final norm with ``model.ln_final``) and ``apply_ln_to_stack(..., recompute_ln=True)``.
The cached-scale path (``recompute_ln=False``) gives ``x / scale`` times the norm's weight
(``hooked_vlm.tl_cache``: TL folds the weight into W_U; we keep HF's W_U and apply it in the cache).

Readouts: ``vocab="all"`` softmaxes over the whole vocabulary (raw unembedding, no family
suppression of image codes); with image-code ids (``image_code_ids=`` or
``model.vocab_roles.image_code_ids``), ``"text"`` softmaxes over the text vocabulary only and
``"image"`` over the image codes only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ._common import SpanLike, forward_with_hooks, index_list, span_mask
from ..spans import TokenSpans
from ..summary import summary_repr


@dataclass
class LogitLensResult:
    """Top-k / target readouts of the lens; rows are the selected (batch, position) pairs."""

    __repr__ = summary_repr  # a short summary, not the tensors (hooked_vlm.summary)

    layers: list[int]
    batch_index: Int[Tensor, " n"]
    positions: Int[Tensor, " n"]
    top_ids: Int[Tensor, "layer n k"]
    top_probs: Float[Tensor, "layer n k"]
    target_ids: Int[Tensor, " t"] | None
    target_probs: Float[Tensor, "layer n t"] | None  # NaN where the target is outside the readout vocab
    target_ranks: Int[Tensor, "layer n t"] | None  # 0 = top token; -1 outside the readout vocab
    spans: TokenSpans
    vocab: str = "all"
    tokenizer: Any = None
    input_ids: Int[Tensor, "batch pos"] | None = None  # the prompt (names the tokens of the interactive view)

    def values(self, what: str = "target_prob", target: int = 0) -> Float[Tensor, "layer n"]:
        """A per-(layer, row) value: 'target_prob', 'target_rank', 'top_prob'."""
        if what == "top_prob":
            return self.top_probs[..., 0]
        if self.target_ids is None:
            raise ValueError("no target tokens were given; pass targets=... to logit_lens")
        if what == "target_prob":
            return self.target_probs[..., target]
        if what == "target_rank":
            return self.target_ranks[..., target].float()
        raise ValueError(f"what must be 'target_prob', 'target_rank' or 'top_prob', got {what!r}")

    def to_grid(self, values: Tensor | None = None, batch: int = 0, image: int = 0, tile: int = 0,
                what: str = "target_prob", target: int = 0) -> Float[Tensor, "layer rows cols"]:
        """Per-row values ([layer, n] or [n]) of one image put back on its patch grid (NaN off-span)."""
        vals = self.values(what, target) if values is None else values
        squeeze = vals.ndim == 1
        vals = vals[None] if squeeze else vals
        sel = self.batch_index == batch
        out = []
        for row in vals:
            full = torch.full((self.spans.seq_len,), float("nan"))
            full[self.positions[sel]] = row[sel].float().cpu()
            out.append(self.spans.to_grid(full, image=image, batch=batch, tile=tile))
        grid = torch.stack(out)
        return grid[0] if squeeze else grid

    def to_dataframe(self, kind: str = "top") -> Any:
        """Tidy DataFrame: kind='top' (layer, batch, position, row, col, k, token_id, token, prob)
        or 'targets' (layer, batch, position, row, col, target_id, token, prob, rank)."""
        import pandas as pd

        g = self.spans.grid[self.batch_index.to(self.spans.grid.device), self.positions.to(self.spans.grid.device)].cpu()
        L, n = len(self.layers), len(self.positions)
        if kind == "top":
            ids, vals, k = self.top_ids, self.top_probs, self.top_ids.shape[-1]
        elif kind == "targets":
            if self.target_ids is None:
                raise ValueError("no target tokens were given")
            k = len(self.target_ids)
            ids, vals = self.target_ids.expand(L, n, k), self.target_probs
        else:
            raise ValueError(f"kind must be 'top' or 'targets', got {kind!r}")
        rep = lambda t: t.reshape(1, n, 1).expand(L, n, k).reshape(-1)
        df = pd.DataFrame({
            "layer": torch.tensor(self.layers).reshape(L, 1, 1).expand(L, n, k).reshape(-1).numpy(),
            "batch": rep(self.batch_index.cpu()).numpy(), "position": rep(self.positions.cpu()).numpy(),
            "image": rep(g[:, 0]).numpy(), "row": rep(g[:, 2]).numpy(), "col": rep(g[:, 3]).numpy(),
            ("k" if kind == "top" else "target"): torch.arange(k).expand(L, n, k).reshape(-1).numpy(),
            "token_id": ids.reshape(-1).cpu().numpy(), "prob": vals.reshape(-1).float().cpu().numpy(),
        })
        if kind == "targets":
            df["rank"] = self.target_ranks.reshape(-1).cpu().numpy()
        if self.tokenizer is not None:
            df["token"] = self.tokenizer.convert_ids_to_tokens(df["token_id"].tolist())
        df["vocab"] = self.vocab
        return df

    def value_label(self, what: str = "target_prob", target: int = 0) -> str:
        """What ``values(what, target)`` holds, naming the token: "p('red')", "rank of 'red'", "top-1 probability"."""
        if what == "top_prob":
            return "top-1 probability"
        name = str(int(self.target_ids[target])) if self.tokenizer is None else \
            self.tokenizer.convert_ids_to_tokens(int(self.target_ids[target]))
        return f"p('{name}')" if what == "target_prob" else f"rank of '{name}' (0 = top)"

    def plot(self, image: Any = None, what: str = "target_prob", target: int = 0, batch: int = 0, image_index: int = 0,
             layers: Sequence[int] | None = None, ncols: int = 6, alpha: float = 0.6, cmap: str = "viridis") -> Any:
        """One panel per layer: the per-patch value on the image grid, drawn over ``image`` (PIL/array) if given.

        Pass the image as the model saw it (e.g. the processor's centre crop): it is stretched onto the grid."""
        import matplotlib.pyplot as plt
        import numpy as np

        grid = self.to_grid(batch=batch, image=image_index, what=what, target=target)
        idx = [self.layers.index(l) for l in (layers if layers is not None else self.layers)]
        ncols = min(ncols, len(idx))
        nrows = -(-len(idx) // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(2.2 * ncols + 0.8, 2.4 * nrows), squeeze=False)
        vmax = float(np.nanmax(grid.numpy()))
        for ax in axes.flat:
            ax.axis("off")
        last = None
        for n_ax, (ax, i) in enumerate(zip(axes.flat, idx)):
            rows, cols = grid.shape[1:]
            ax.axis("on")
            if image is not None:
                ax.imshow(np.asarray(image), extent=(0, cols, rows, 0))
            last = ax.imshow(grid[i].numpy(), extent=(0, cols, rows, 0), alpha=alpha if image is not None else 1.0,
                             cmap=cmap + ("_r" if what == "target_rank" else ""), vmin=0, vmax=vmax)
            ax.set_title(f"layer {self.layers[i]}" + (" (output)" if self.layers[i] == max(self.layers) else ""), fontsize=8)
            ax.set_xlabel("patch column", fontsize=7)
            if n_ax % ncols == 0:
                ax.set_ylabel("patch row", fontsize=7)
            ax.tick_params(labelsize=6)
        label = self.value_label(what, target)
        from matplotlib.cm import ScalarMappable

        fig.colorbar(ScalarMappable(last.norm, last.cmap), ax=axes.ravel().tolist(), shrink=0.8, label=label)  # opaque
        fig.suptitle(f"logit lens: {label} at each image patch, per layer ({self.vocab} vocabulary)", fontsize=9)
        return fig

    def show(self, image: Any = None, *, others: Sequence["LogitLensResult"] = (), batch: int = 0, image_index: int = 0,
             title: str | None = None) -> Any:
        """Interactive view (:func:`hooked_vlm.viz.lens_view`): the last line of a notebook cell displays it;
        ``others``: the same lens read out in other vocabularies (native models: ``vocab="image"``)."""
        from ..viz import lens_view

        return lens_view(self, image, others=others, batch=batch, image_index=image_index, title=title)

    def to_html(self, path: Any, image: Any = None, **kwargs: Any) -> Any:
        """Write the interactive view (see :meth:`show`) as one self-contained HTML file; returns its path."""
        return self.show(image, **kwargs).save(path)

    def _repr_html_(self) -> str:
        return self.show()._repr_html_()


def model_image_codes(model: Any) -> Tensor | None:
    """``model.vocab_roles.image_code_ids`` when the model has a non-empty image-code vocabulary, else None."""
    codes = getattr(getattr(model, "vocab_roles", None), "image_code_ids", None)
    return None if codes is None or len(codes) == 0 else codes


def readout_ids(model: Any, vocab: str, image_code_ids: Sequence[int] | Tensor | None = None) -> Tensor | None:
    """Vocabulary ids of a readout ('all' -> None = every id; 'text'; 'image')."""
    if image_code_ids is None:
        image_code_ids = model_image_codes(model)
    if vocab == "all":
        return None
    if vocab not in ("text", "image"):
        raise ValueError(f"vocab must be 'all', 'text', 'image' or 'auto', got {vocab!r}")
    if image_code_ids is None or len(image_code_ids) == 0:
        raise ValueError(f"vocab={vocab!r} needs image-code ids: this model has none (model.vocab_roles); pass image_code_ids=...")
    codes = torch.zeros(model.cfg.d_vocab, dtype=torch.bool, device=model.device)
    codes[torch.as_tensor(image_code_ids, dtype=torch.long, device=model.device)] = True
    return (codes if vocab == "image" else ~codes).nonzero().flatten()


def lens_logits(model: Any, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
    """Final norm (with its weight) + unembedding of any residual vectors: the lens of one chunk."""
    shape = resid.shape
    x = model.ln_final(resid.reshape(1, -1, shape[-1]))
    return model.unembed(x).reshape(*shape[:-1], -1)


@torch.no_grad()
def lens_readout(model: Any, resid: Float[Tensor, "n d_model"], top_k: int = 5, targets: Tensor | None = None,
                 vocab_ids: Tensor | None = None, chunk_elems: int = 2**24):
    """Top-k ids/probs and target probs/ranks of the lens of ``resid`` rows, chunk by chunk."""
    V = model.cfg.d_vocab if vocab_ids is None else len(vocab_ids)
    chunk = max(1, chunk_elems // V)
    local_t = None
    if targets is not None:
        if vocab_ids is None:
            local_t = targets
        else:
            lookup = torch.full((model.cfg.d_vocab,), -1, dtype=torch.long, device=model.device)
            lookup[vocab_ids] = torch.arange(len(vocab_ids), device=model.device)
            local_t = lookup[targets]
    tops, tprobs, tp, tr = [], [], [], []
    for start in range(0, resid.shape[0], chunk):
        logits = lens_logits(model, resid[start:start + chunk]).float()
        if vocab_ids is not None:
            logits = logits[:, vocab_ids]
        logp = logits.log_softmax(-1)
        top = logp.topk(min(top_k, V), -1)
        ids = top.indices if vocab_ids is None else vocab_ids[top.indices]
        tops.append(ids)
        tprobs.append(top.values.exp())
        if local_t is not None:
            ok = local_t >= 0
            safe = local_t.clamp(min=0)
            p = logp[:, safe].exp().masked_fill(~ok, float("nan"))
            ranks = torch.stack([(logits > logits[:, j:j + 1]).sum(-1) for j in safe.tolist()], -1)
            tp.append(p)
            tr.append(ranks.masked_fill(~ok, -1))
        del logits, logp
    cat = lambda xs: torch.cat(xs) if xs else None
    return cat(tops), cat(tprobs), cat(tp), cat(tr)


def _resid_hook_name(model: Any, layer: int) -> str:
    n = model.cfg.n_layers
    return f"blocks.{layer}.hook_resid_pre" if layer < n else f"blocks.{n - 1}.hook_resid_post"


@torch.no_grad()
def logit_lens(
    model: Any,
    inputs: dict | None = None,
    *,
    cache: Any = None,
    layers: Sequence[int] | None = None,
    span: SpanLike = "image",
    top_k: int = 5,
    targets: Sequence[int] | Sequence[str] | Tensor | None = None,
    vocab: str = "auto",
    image_code_ids: Sequence[int] | Tensor | None = None,
    chunk_elems: int = 2**24,
) -> LogitLensResult:
    """Logit lens of ``span`` at ``layers`` (default every layer 0..n_layers, see module doc).

    Give ``inputs`` (a forward is run with hooks that reduce each layer as it is computed: memory
    bounded) or a ``cache`` holding the ``hook_resid_pre``/``hook_resid_post`` entries.
    ``targets``: token ids (or single-token strings) whose probability and rank to report.
    """
    n = model.cfg.n_layers
    layers = index_list("layers", layers, n + 1)  # lens layers: 0 = the LM input .. n = after the last block
    if vocab == "auto":
        has_codes = (image_code_ids is not None and len(image_code_ids) > 0) or model_image_codes(model) is not None
        vocab = "text" if has_codes else "all"
    vocab_ids = readout_ids(model, vocab, image_code_ids)
    target_ids = None
    if targets is not None:
        target_ids = torch.as_tensor([model.to_single_token(t) if isinstance(t, str) else int(t) for t in targets],
                                     dtype=torch.long, device=model.device)
    results: dict[int, tuple] = {}
    state: dict[str, Any] = {}

    def read(resid: Tensor, spans: TokenSpans, layer: int) -> None:
        if "rows" not in state:
            state["spans"] = spans
            state["rows"] = span_mask(spans, span).nonzero()
        bi, pi = state["rows"][:, 0], state["rows"][:, 1]
        results[layer] = lens_readout(model, resid[bi, pi], top_k, target_ids, vocab_ids, chunk_elems)

    if cache is not None:
        for l in layers:
            read(cache[_resid_hook_name(model, l)], cache.spans, l)
    else:
        if inputs is None:
            raise ValueError("give inputs (a forward is run) or cache=")
        hooks = []
        for l in layers:
            def lens_hook(resid: Tensor, hook: Any, layer: int = l) -> None:
                read(resid, hook.spans, layer)
            hooks.append((_resid_hook_name(model, l), lens_hook))
        forward_with_hooks(model, inputs, hooks, return_type=None)
    rows = state["rows"]
    stack = lambda i: None if results[layers[0]][i] is None else torch.stack([results[l][i] for l in layers]).cpu()
    return LogitLensResult(layers=layers, batch_index=rows[:, 0].cpu(), positions=rows[:, 1].cpu(), top_ids=stack(0),
                           top_probs=stack(1), target_ids=None if target_ids is None else target_ids.cpu(),
                           target_probs=stack(2), target_ranks=stack(3), spans=state["spans"], vocab=vocab,
                           tokenizer=getattr(model, "tokenizer", None),
                           input_ids=None if inputs is None else inputs["input_ids"].cpu())
