"""Next-token predictions of a clean run next to edited runs, as an interactive table with top-k bars.

``span_ablation``, ``attention_knockout`` and ``activation_patching`` return logits (tensors, so they
compose with everything else); :func:`compare_predictions` turns any of them into a result that renders:

    abl = span_ablation(model, inputs, span=obj, how="mean", value=mean)
    ko = {f"layers {w[0]}-{w[-1]}": attention_knockout(model, inputs, src=obj, dst="last", layers=w) for w in windows}
    compare_predictions(model, inputs, {"object ablated": abl, **ko}, highlight=obj, image=scene.image)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from ..analysis._common import forward_with_hooks
from ..analysis.patching import last_logits
from .document import View, image_data_url
from ..span_select import SpanLike, span_mask, spans_of
from ..summary import summary_repr


@dataclass
class PredictionComparison:
    """Per run (clean first): next-token top-k at the ``last`` position, and the reference token's probability."""

    __repr__ = summary_repr  # a short summary, not the tensors (hooked_vlm.summary)

    runs: list[str]
    top_ids: Tensor  # [run, k]
    top_probs: Tensor  # [run, k]
    ref_id: int  # the token tracked in every run (default: the clean run's top token)
    ref_probs: Tensor  # [run]
    ref_logit_change: Tensor  # [run]: logit(ref) - the clean run's logit(ref)
    tokenizer: Any = None
    highlight: dict[str, list[list[int]]] | None = None  # run -> [[row, col], ...] patches the edit touched
    grid: dict | None = None
    image: Any = None

    def token(self, i: int) -> str:
        return f"#{i}" if self.tokenizer is None else str(self.tokenizer.convert_ids_to_tokens(int(i)))

    def to_dataframe(self) -> Any:
        import pandas as pd

        return pd.DataFrame({"run": self.runs, "top_token": [self.token(i) for i in self.top_ids[:, 0].tolist()],
                             "top_prob": self.top_probs[:, 0].tolist(), "ref_token": self.token(self.ref_id),
                             "ref_prob": self.ref_probs.tolist(), "ref_logit_change": self.ref_logit_change.tolist()})

    def view(self, title: str | None = None) -> View:
        data = {
            "runs": self.runs, "ref": self.token(self.ref_id), "ref_probs": self.ref_probs.tolist(),
            "ref_logit_change": self.ref_logit_change.tolist(),
            "top": [[self.token(i) for i in row] for row in self.top_ids.tolist()], "top_probs": self.top_probs.tolist(),
            "highlight": self.highlight, "grid": self.grid, "image": image_data_url(self.image),
        }
        return View("predictions", data, title or f"next-token predictions: clean vs edited runs (tracking '{data['ref']}')",
                    height=620)

    def show(self, title: str | None = None) -> View:
        return self.view(title)

    def to_html(self, path: str | Path, title: str | None = None) -> Path:
        return self.view(title).save(path)

    def _repr_html_(self) -> str:
        return self.view()._repr_html_()


@torch.no_grad()
def compare_predictions(model: Any, inputs: dict, runs: dict[str, Tensor], *, clean: Tensor | None = None,
                        token: int | str | None = None, top_k: int = 8, batch: int = 0,
                        highlight: SpanLike | dict[str, SpanLike] | None = None, image: Any = None,
                        image_index: int = 0) -> PredictionComparison:
    """Compare the ``last``-position predictions of ``runs`` ({name: logits [batch, pos, vocab]}) with the clean
    run (computed unless ``clean=`` or a run named "clean" is given). ``token``: the token to track (default: the
    clean top token). ``highlight``: the span each edit touched (one for all runs, or per run), drawn on the image."""
    if not runs:
        raise ValueError("runs is empty: pass {name: logits} of at least one edited run")
    spans = spans_of(model, inputs)
    runs = dict(runs)
    if clean is None:
        clean = runs.pop("clean", None)
    if clean is None:
        clean = forward_with_hooks(model, inputs)
    names = ["clean", *[n for n in runs if n != "clean"]]
    logits = []
    for name, lg in [("clean", clean), *runs.items()]:
        if tuple(lg.shape[:2]) != (spans.batch, spans.seq_len):
            raise ValueError(f"run {name!r}: logits of shape {tuple(lg.shape)} do not match the inputs "
                             f"[batch, pos] = {(spans.batch, spans.seq_len)}")
        logits.append(last_logits(lg, spans)[batch].float())
    last = torch.stack(logits)  # [run, vocab]
    probs = last.softmax(-1)
    top = probs.topk(top_k, -1)
    ref = int(top.indices[0, 0]) if token is None else (model.to_single_token(token) if isinstance(token, str) else int(token))
    grid, marks = None, None
    g = spans.grid[batch].cpu()
    on_image = (g[:, 0] == image_index) & (g[:, 2] >= 0)
    if highlight is not None and bool(on_image.any()):
        grid = {"rows": int(g[on_image, 2].max()) + 1, "cols": int(g[on_image, 3].max()) + 1}
        per_run = highlight if isinstance(highlight, dict) else {n: highlight for n in names[1:]}
        marks = {}
        for name, span in per_run.items():
            m = span_mask(spans, span)[batch].cpu() & on_image
            marks[name] = g[m][:, 2:].tolist()
    return PredictionComparison(runs=names, top_ids=top.indices.cpu(), top_probs=top.values.cpu(), ref_id=ref,
                                ref_probs=probs[:, ref].cpu(), ref_logit_change=(last[:, ref] - last[0, ref]).cpu(),
                                tokenizer=getattr(model, "tokenizer", None), highlight=marks, grid=grid, image=image)
