"""``attribution_graph``: the direct effects between the nodes of the frozen replacement model, by batched backward passes.

The method is circuit-tracer's (``attribution/attribute.py``, ``context_transformerlens.py``): run the frozen
replacement (:mod:`.replacement`) over ``batch_size`` copies of the prompt; to get the row of a target node,
seed the gradient of copy ``b`` at the vector the target reads (the encoder column ``W_enc[:, f]`` of a feature,
at its layer's transcoder input and position; the unembedding direction of a logit, at ``ln_final``'s output and
the query position), and take the gradient at every place a source writes. Because the frozen system is linear,
``grad . vector`` is the direct effect of a source on the target:

* input node ``p`` (token embedding or image embedding): ``grad(hook_embed)[p] . embed[p]``;
* feature ``(l, p, f)`` with activation ``a``: ``sum_{l' >= l} grad(write l')[p] . a W_dec[l, l'][f]`` (a PLT has l' = l);
* error node ``(l, p)``: ``grad(write l)[p] . error[l, p]``.

Every target's value is the sum of its incoming edges plus a constant (``AttributionGraph.bias``): the encoder
bias and whatever the biases (transcoder ``b_dec``, norm and projection biases) give through the frozen system,
computed by a separate forward with every node set to zero. Features are added to the graph in order of their
influence on the logits (circuit-tracer's greedy ranking) up to ``max_feature_nodes``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .graph import AttributionGraph, LogitTargets, partial_influences
from .replacement import clean_run, replacement_forward
from .transcoders import as_transcoder_set


def logit_targets(model: Any, run: Any, target: Any, position: int, max_n_logits: int,
                  desired_logit_prob: float) -> LogitTargets:
    """The logit nodes: ``target`` None = the most likely tokens until their probability sums to
    ``desired_logit_prob`` (at most ``max_n_logits``); an id / token string / list of them; or a pair
    ``(a, b)`` = ``logit(a) - logit(b)``. Directions are read against ``ln_final``'s output (before any soft-cap)."""
    W_U = model.W_U.detach()  # [d_model, d_vocab]
    pre = run.final[position].to(W_U.dtype) @ W_U  # pre-cap logits at the query
    probs = torch.softmax(run.logits[position].float(), -1)
    tok = model.tokenizer

    def as_id(t: Any) -> int:
        if isinstance(t, str):
            return model.to_single_token(t)
        t = int(t)
        if not 0 <= t < W_U.shape[1]:
            raise ValueError(f"target token id {t} is outside the vocabulary (0..{W_U.shape[1] - 1})")
        return t

    def name(i: int) -> str:
        return tok.convert_ids_to_tokens(i) if tok is not None else str(i)

    if target is None:
        order = torch.argsort(probs, descending=True)
        cum = torch.cumsum(probs[order], 0)
        n = min(max_n_logits, int((cum < desired_logit_prob).sum()) + 1)
        ids = order[:n].tolist()
        return LogitTargets(ids=[[i] for i in ids], labels=[name(i) for i in ids], directions=W_U[:, ids].T,
                            weights=probs[ids].to(W_U.dtype), values=pre[ids])
    if isinstance(target, tuple) and len(target) == 2:
        a, b = as_id(target[0]), as_id(target[1])
        d = W_U[:, a] - W_U[:, b]
        return LogitTargets(ids=[[a, b]], labels=[f"{name(a)} - {name(b)}"], directions=d[None],
                            weights=torch.ones(1, dtype=W_U.dtype, device=W_U.device), values=(pre[a] - pre[b])[None])
    items = [target] if isinstance(target, (int, str)) or (isinstance(target, Tensor) and target.ndim == 0) else list(target)
    ids = [as_id(t) for t in items]
    w = probs[ids].to(W_U.dtype)
    return LogitTargets(ids=[[i] for i in ids], labels=[name(i) for i in ids], directions=W_U[:, ids].T,
                        weights=w / w.sum().clamp(min=1e-12), values=pre[ids])


class _Rows:
    """The frozen forward over ``batch`` copies, kept alive, and the contraction of gradients into edge rows."""

    def __init__(self, model: Any, run: Any, ts: Any, batch: int, feats: Tensor, feat_vals: Tensor):
        self.ts, self.run, self.batch = ts, run, batch
        self.feats, self.feat_vals = feats, feat_vals  # [n_active, 3] (layer, pos, feature), [n_active] activations
        with torch.enable_grad():
            _, self.state = replacement_forward(model, run, ts, batch, grad=True)
        self.n_pos = run.embeds.shape[0]
        self.leaves = [self.state.embed] + self.state.writes

    def rows(self, reads: list[tuple[int, int, Tensor]]) -> Tensor:
        """Edge rows [len(reads), n_active + n_layers * n_pos + n_pos] for targets that read vector ``v`` at
        (layer, position) (layer ``n_layers`` = ``ln_final``'s output); at most ``batch`` targets."""
        ts, st, L, P = self.ts, self.state, self.ts.n_layers, self.n_pos
        seeds: dict[int, Tensor] = {}
        for b, (layer, pos, v) in enumerate(reads):
            t = st.final if layer == L else st.reads[layer]
            if layer not in seeds:
                seeds[layer] = torch.zeros_like(t)
            seeds[layer][b, pos] = v.to(t.dtype)
        outs = [st.final if layer == L else st.reads[layer] for layer in seeds]
        with torch.enable_grad():
            grads = torch.autograd.grad(outs, self.leaves, grad_outputs=list(seeds.values()), retain_graph=True,
                                        allow_unused=True)
        grads = [torch.zeros_like(leaf) if g is None else g for g, leaf in zip(grads, self.leaves)]
        g_embed, g_writes = grads[0], grads[1:]
        n = len(reads)
        feat_cols = torch.zeros(self.batch, len(self.feats), dtype=g_embed.dtype, device=g_embed.device)
        for src in range(L):
            sel = torch.nonzero(self.feats[:, 0] == src)[:, 0]
            if not len(sel):
                continue
            pos, fid, a = self.feats[sel, 1], self.feats[sel, 2], self.feat_vals[sel]
            for dst in ts.targets_of(src):
                vecs = ts.W_dec[(src, dst)][fid] * a[:, None]  # [k, d_out]
                for chunk in torch.split(torch.arange(len(sel), device=sel.device), 4096):
                    feat_cols[:, sel[chunk]] += torch.einsum("bkd,kd->bk", g_writes[dst][:, pos[chunk]], vecs[chunk])
        err_cols = torch.stack([(g_writes[l] * self.run.errors[l]).sum(-1) for l in range(L)], 1)  # [B, L, P]
        emb_cols = (g_embed * self.run.embeds).sum(-1)  # [B, P]
        return torch.cat([feat_cols, err_cols.reshape(self.batch, L * P), emb_cols], 1)[:n].detach()


@torch.no_grad()
def attribution_graph(model: Any, inputs: dict, transcoders: Any, target: Any = None, *, position: int = -1,
                      max_feature_nodes: int | None = None, batch_size: int = 32, max_n_logits: int = 10,
                      desired_logit_prob: float = 0.95, update_interval: int = 4, verbose: bool = False
                      ) -> AttributionGraph:
    """The attribution graph of one prompt (``inputs``: one item, no padding) at query ``position`` (default last).

    transcoders: a :class:`~.transcoders.TranscoderSet` or a list of SAELens transcoders (one per layer).
    target: None (the top logits), a token id / string or a list of them, or ``(a, b)`` for ``logit(a) - logit(b)``.
    max_feature_nodes: keep at most this many active features, the most influential first (default all).
    batch_size: targets per backward pass (the frozen forward holds ``batch_size`` copies of the prompt).
    Returns an :class:`~.graph.AttributionGraph` with the dense ``adjacency[target, source]``.
    """
    ts = as_transcoder_set(transcoders).to(model.device, model.dtype)
    run = clean_run(model, inputs, ts)
    n_pos, L = run.embeds.shape[0], ts.n_layers
    pos = position % n_pos
    targets = logit_targets(model, run, target, pos, max_n_logits, desired_logit_prob)

    active = [torch.nonzero(a) for a in run.acts]  # per layer [k, 2] (pos, feature)
    feats = torch.cat([torch.cat([torch.full_like(idx[:, :1], l), idx], 1) for l, idx in enumerate(active)])
    feat_vals = torch.cat([run.acts[l][idx[:, 0], idx[:, 1]] for l, idx in enumerate(active)])
    feat_pre = torch.cat([run.pre[l][idx[:, 0], idx[:, 1]] for l, idx in enumerate(active)])
    n_active = len(feats)
    n_keep = n_active if max_feature_nodes is None else min(max_feature_nodes, n_active)

    rows = _Rows(model, run, ts, batch_size, feats, feat_vals)
    n_src = n_active + L * n_pos + n_pos
    logit_rows = torch.cat([rows.rows([(L, pos, d) for d in targets.directions[i:i + batch_size]])
                            for i in range(0, len(targets), batch_size)])

    feat_rows = torch.zeros(n_keep, n_src, dtype=logit_rows.dtype, device=logit_rows.device)
    order: list[int] = []
    visited = torch.zeros(n_active, dtype=torch.bool)
    bar = tqdm(total=n_keep, desc="attribution rows", disable=not verbose)
    while len(order) < n_keep:
        if n_keep == n_active:
            pending = torch.arange(n_active)
        else:
            infl = partial_influences([logit_rows, feat_rows[: len(order)]], targets.weights, order)
            rank = torch.argsort(infl[:n_active].cpu(), descending=True)
            pending = rank[~visited[rank]][: min(update_interval * batch_size, n_keep - len(order))]
        for chunk in torch.split(pending, batch_size):
            k = feats[chunk.to(feats.device)]
            reads = [(int(l), int(p), ts.W_enc[int(l)][:, int(f)]) for l, p, f in k.tolist()]
            feat_rows[len(order): len(order) + len(chunk)] = rows.rows(reads)
            order += chunk.tolist()
            visited[chunk] = True
            bar.update(len(chunk))
    bar.close()
    del rows

    # constants: every node zeroed, what reaches each target through the frozen system (biases)
    _, zero = replacement_forward(model, run, ts, sources=False)
    keep = torch.tensor(sorted(order), dtype=torch.long)
    k = feats[keep.to(feats.device)]
    feat_bias = torch.stack([zero.reads[int(l)][0, int(p)] @ ts.W_enc[int(l)][:, int(f)] + ts.b_enc[int(l)][int(f)]
                             for l, p, f in k.tolist()]) if len(k) else feat_pre[:0]
    logit_bias = targets.directions @ zero.final[0, pos]

    # assemble: nodes = [kept features (layer, pos, feature order), errors (layer, pos), inputs (pos), logits]
    row_of = {node: i for i, node in enumerate(order)}
    cols = torch.cat([keep.to(logit_rows.device), torch.arange(n_active, n_src, device=logit_rows.device)])
    n_nodes = len(keep) + L * n_pos + n_pos + len(targets)
    adjacency = torch.zeros(n_nodes, n_nodes, dtype=logit_rows.dtype, device=logit_rows.device)
    if len(keep):  # the kept columns first (small), then the rows into node order: no copy of the full rows
        rows_in_order = torch.tensor([row_of[i] for i in keep.tolist()], dtype=torch.long, device=feat_rows.device)
        adjacency[: len(keep), : len(cols)] = feat_rows.index_select(1, cols)[rows_in_order]
    del feat_rows
    adjacency[-len(targets):, : len(cols)] = logit_rows[:, cols]
    return AttributionGraph(
        adjacency=adjacency.cpu(), features=k.cpu(), activations=feat_vals[keep.to(feat_vals.device)].cpu(),
        pre_activations=feat_pre[keep.to(feat_pre.device)].cpu(), feature_bias=feat_bias.cpu(),
        logit_targets=targets.to("cpu"), logit_bias=logit_bias.cpu(), n_layers=L, n_pos=n_pos, position=pos,
        input_ids=run.inputs["input_ids"][0].cpu(), spans=run.spans, str_tokens=_str_tokens(model, run.inputs),
        scan=ts.scan, n_active=n_active, softcap=model.cfg.text.final_logit_softcap)


def _str_tokens(model: Any, inputs: dict) -> Sequence[str]:
    if model.tokenizer is None:
        return [str(t) for t in inputs["input_ids"][0].tolist()]
    return model.to_str_tokens(inputs)


__all__ = ["attribution_graph", "logit_targets"]
