"""SAE features drawn on the image: per-patch feature maps and the top-activating (image, patch) pairs.

Feature activations are read where SAELens puts them, ``{hook}.hook_sae_acts_post``, with the SAE
spliced *with its error term* (so the forward is the plain one) and the forward stopped after the
SAE's block. They are laid out over the language model's sequence, so the image tokens' patch grid
(:meth:`TokenSpans.to_grid`, the machinery of ``LogitLensResult.to_grid``) puts them back on the
image. Vision-tower hooks have no sequence spans: read their features from
``model.run_with_cache_with_saes(...)`` directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..batches import iterate_batches
from ..span_select import SpanLike, span_mask
from ..spans import TokenSpans
from .splice import NON_SEQUENCE_PREFIXES, sae_hook_names
from ..summary import summary_repr


def _stop_layer(model: Any, hook_name: str) -> int | None:
    """The block after which nothing at ``hook_name`` can change (None: run to the end)."""
    parts = hook_name.split(".")
    if parts[0] == "blocks" and parts[1].isdigit():
        return int(parts[1]) + 1 if int(parts[1]) + 1 < model.cfg.n_layers else None
    if hook_name == "hook_embed" or hook_name.startswith(NON_SEQUENCE_PREFIXES):
        return 0
    return None


def _features(sae: Any, feature: int | Sequence[int] | None) -> list[int]:
    d_sae = int(sae.cfg.d_sae)
    feats = list(range(d_sae)) if feature is None else [int(feature)] if isinstance(feature, int) else [int(f) for f in feature]
    bad = [f for f in feats if not 0 <= f < d_sae]
    if bad:
        raise ValueError(f"features {bad} out of range: this SAE has d_sae={d_sae} features (0..{d_sae - 1})")
    return feats


@torch.no_grad()
def feature_acts(model: Any, sae: Any, inputs: dict, feature: int | Sequence[int] | None = None,
                 hook_name: str | None = None) -> tuple[Float[Tensor, "batch pos n_features"], TokenSpans, str]:
    """(``hook_sae_acts_post`` of ``feature`` [batch, pos, n_features], the forward's spans, the cache name).

    The SAE is spliced with its error term, so the activations are those of the plain forward."""
    _, name_out = sae_hook_names(sae, hook_name)
    if name_out.startswith(NON_SEQUENCE_PREFIXES):
        raise ValueError(f"'{name_out}' is a vision-tower/projector hook: its features have no positions in the "
                         "sequence to draw. Read them from model.run_with_cache_with_saes(inputs, saes=[sae])"
                         f"[0:2][1]['{name_out}.hook_sae_acts_post'] (one row per image), or use a language-model hook")
    feats = _features(sae, feature)
    site = f"{name_out}.hook_sae_acts_post"
    stop = _stop_layer(model, name_out)
    extra = {"return_type": None} if stop is None else {"stop_at_layer": stop}
    with model.saes([sae], use_error_term=True, hook_name=hook_name):  # what was at the hook comes back after
        _, cache = model.run_with_cache(**dict(inputs), names_filter=[site], **extra)
    return cache[site][..., feats].float(), cache.spans, site


@dataclass
class SAEFeatureMap:
    """Per-position activations of SAE features over one batch; ``values[f, b, p]``."""

    __repr__ = summary_repr  # a short summary, not the tensors (hooked_vlm.summary)

    features: list[int]
    hook_name: str  # where they were read: '{hook}.hook_sae_acts_post'
    values: Float[Tensor, "n_features batch pos"]
    spans: TokenSpans

    def _index(self, feature: int | None) -> int:
        if feature is None:
            if len(self.features) != 1:
                raise ValueError(f"this map holds features {self.features}; pass feature=")
            return 0
        if feature not in self.features:
            raise ValueError(f"feature {feature} is not in this map (features {self.features})")
        return self.features.index(feature)

    def to_grid(self, feature: int | None = None, batch: int = 0, image: int = 0, tile: int = 0) -> Float[Tensor, "rows cols"]:
        """Activations of ``feature`` at one image's tokens on its patch grid (NaN where no token)."""
        return self.spans.to_grid(self.values[self._index(feature), batch], image=image, batch=batch, tile=tile)

    def to_dataframe(self, span: SpanLike = "image") -> Any:
        """Tidy rows (feature, batch, position, image, tile, row, col, activation) over ``span``."""
        import pandas as pd

        rows = span_mask(self.spans, span).nonzero().cpu()
        g = self.spans.grid.cpu()[rows[:, 0], rows[:, 1]]
        frames = [pd.DataFrame({"feature": f, "batch": rows[:, 0].numpy(), "position": rows[:, 1].numpy(),
                                "image": g[:, 0].numpy(), "tile": g[:, 1].numpy(), "row": g[:, 2].numpy(),
                                "col": g[:, 3].numpy(), "activation": self.values[i].cpu()[rows[:, 0], rows[:, 1]].numpy()})
                  for i, f in enumerate(self.features)]
        return pd.concat(frames, ignore_index=True)

    def plot(self, image: Any = None, batch: int = 0, image_index: int = 0, tile: int = 0,
             features: Sequence[int] | None = None, ncols: int = 4, alpha: float = 0.6, cmap: str = "viridis") -> Any:
        """One panel per feature: its activation on the patch grid, over ``image`` (as the model saw it) if given."""
        import matplotlib.pyplot as plt
        import numpy as np

        feats = list(self.features if features is None else features)
        ncols = min(ncols, len(feats))
        nrows = -(-len(feats) // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(max(3.2 * ncols, 4.2), 2.9 * nrows + 0.4), squeeze=False)
        for ax in axes.flat[len(feats):]:
            ax.axis("off")
        for ax, f in zip(axes.flat, feats):
            grid = self.to_grid(f, batch=batch, image=image_index, tile=tile).numpy()
            rows, cols = grid.shape
            if image is not None:
                ax.imshow(np.asarray(image), extent=(0, cols, rows, 0))
            vmax = float(np.nanmax(grid)) if np.isfinite(grid).any() and np.nanmax(grid) > 0 else 1.0
            im = ax.imshow(grid, extent=(0, cols, rows, 0), alpha=alpha if image is not None else 1.0, cmap=cmap,
                           vmin=0, vmax=vmax)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="activation")
            ax.set_title(f"feature {f}", fontsize=9)
            ax.set_xlabel("patch column", fontsize=8)
            ax.set_ylabel("patch row", fontsize=8)
        site = self.hook_name.removesuffix(".hook_sae_acts_post")
        fig.suptitle(f"SAE features at {site}\n(batch {batch}, image {image_index})", fontsize=9)
        fig.tight_layout()
        return fig


def sae_feature_map(model: Any, sae: Any, inputs: dict, feature: int | Sequence[int] | None = None,
                    hook_name: str | None = None) -> SAEFeatureMap:
    """Activations of ``feature`` (an id, a list, or None = all) at every position of ``inputs``."""
    acts, spans, site = feature_acts(model, sae, inputs, feature, hook_name)
    return SAEFeatureMap(_features(sae, feature), site, acts.permute(2, 0, 1).cpu(), spans)


class _Recorder:
    """Iterates a dataset and keeps the items of the batch in progress (for their images)."""

    def __init__(self, data: Iterable[Any]):
        self.data, self.recent = data, {}

    def __iter__(self):
        for i, x in enumerate(self.data):
            self.recent[i] = x
            yield x


class _SizedRecorder(_Recorder):
    def __len__(self) -> int:
        return len(self.data)


def _shown_image(item: Any, inputs: dict, spans: TokenSpans, b: int, image: int) -> Any:
    """The image of a dataset item: the PIL/array of an (image, prompt) pair, else its pixel_values rescaled."""
    if isinstance(item, (tuple, list)) and len(item) == 2 and not isinstance(item, dict):
        img = item[0]
        return img[image] if isinstance(img, (list, tuple)) else img
    pv = inputs.get("pixel_values")
    if pv is None or pv.ndim != 4:  # e.g. Qwen2-VL's flattened patches: no picture to show
        return None
    row = sum(spans.n_images(i) for i in range(b)) + image
    x = pv[row].float().cpu().permute(1, 2, 0)
    return ((x - x.min()) / (x.max() - x.min()).clamp(min=1e-8)).numpy()


@dataclass
class TopActivations:
    """The k (example, patch) pairs where one SAE feature is highest, best first."""

    __repr__ = summary_repr  # a short summary, not the tensors (hooked_vlm.summary)

    feature: int
    hook_name: str
    values: Float[Tensor, " k"]
    examples: Int[Tensor, " k"]  # index in the dataset
    positions: Int[Tensor, " k"]  # position in that example's (padded) batch row
    cells: Int[Tensor, "k 4"]  # (image, tile, row, col) of the patch
    grids: list[Tensor] = field(default_factory=list)  # the feature's map on that image [rows, cols]
    images: list[Any] = field(default_factory=list)  # what to draw under it (None: nothing)

    def to_dataframe(self) -> Any:
        import pandas as pd

        c = self.cells.numpy()
        return pd.DataFrame({"rank": range(len(self.values)), "example": self.examples.numpy(), "image": c[:, 0],
                             "tile": c[:, 1], "row": c[:, 2], "col": c[:, 3], "activation": self.values.numpy(),
                             "feature": self.feature})

    def plot(self, ncols: int = 4, alpha: float = 0.5, cmap: str = "viridis", outline: str = "red") -> Any:
        """Contact sheet: each example's image with the feature's map over it and the top patch outlined."""
        import matplotlib.pyplot as plt
        import numpy as np
        from matplotlib.patches import Rectangle

        n = len(self.values)
        if n == 0:
            raise ValueError("no activations to draw (the span held no image tokens)")
        ncols = min(ncols, n)
        nrows = -(-n // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.6 * nrows + 0.6), squeeze=False)
        vmax = max(float(self.values.max()), 1e-8)
        im = None
        for ax in axes.flat[n:]:
            ax.axis("off")
        for i, ax in enumerate(axes.flat[:n]):
            grid = self.grids[i].numpy()
            rows, cols = grid.shape
            if self.images[i] is not None:
                ax.imshow(np.asarray(self.images[i]), extent=(0, cols, rows, 0))
            im = ax.imshow(grid, extent=(0, cols, rows, 0), alpha=alpha if self.images[i] is not None else 1.0,
                           cmap=cmap, vmin=0, vmax=vmax)
            _, _, r, c = self.cells[i].tolist()
            ax.add_patch(Rectangle((c, r), 1, 1, fill=False, edgecolor=outline, linewidth=2))
            ax.set_title(f"#{i + 1}: example {int(self.examples[i])}, act {float(self.values[i]):.3g}", fontsize=8)
            ax.set_xlabel("patch column", fontsize=7)
            ax.set_ylabel("patch row", fontsize=7)
            ax.tick_params(labelsize=6)
        site = self.hook_name.removesuffix(".hook_sae_acts_post")
        fig.suptitle(f"top {n} patches of SAE feature {self.feature} at {site}", fontsize=9)
        fig.tight_layout(rect=(0, 0, 0.9, 1))
        fig.colorbar(im, ax=list(axes.flat), fraction=0.03, pad=0.02, label=f"feature {self.feature} activation")
        return fig


@torch.no_grad()
def top_activating(model: Any, sae: Any, dataset: Iterable[Any], feature: int, k: int = 16, batch_size: int = 8,
                   span: SpanLike = "image", per_example: int | None = 1, hook_name: str | None = None,
                   progress: bool = True) -> TopActivations:
    """The ``k`` (example, patch) pairs of ``dataset`` where ``feature`` is highest, over positions of ``span``.

    ``dataset``: anything :func:`hooked_vlm.batches.iterate_batches` takes ((image, prompt) pairs or
    prepared inputs), batched with a progress bar. ``per_example`` caps the patches one example may
    contribute (None: no cap). Only the running top k is kept, so memory stays bounded.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    (f,) = _features(sae, feature)
    rec = _SizedRecorder(dataset) if hasattr(dataset, "__len__") else _Recorder(dataset)
    best: list[tuple[float, int, int, list[int], Tensor, Any]] = []  # (value, example, position, cell, grid, image)
    site = ""
    for idx, inputs in iterate_batches(model, rec, batch_size, progress, desc=f"feature {f}"):
        items = [rec.recent.pop(i) for i in idx]
        acts, spans, site = feature_acts(model, sae, inputs, [f], hook_name)
        acts = acts[..., 0]
        sel = span_mask(spans, span) & (spans.grid[..., 2] >= 0)  # positions with a patch cell
        floor = best[-1][0] if len(best) >= k else -float("inf")
        for b in range(acts.shape[0]):
            pos = sel[b].nonzero().flatten()
            if not len(pos):
                continue
            vals = acts[b, pos]
            order = vals.argsort(descending=True)[: per_example or len(pos)]
            for j in order.tolist():
                v = float(vals[j])
                if v <= floor and len(best) >= k:
                    break
                p = int(pos[j])
                cell = spans.grid[b, p].tolist()
                grid = spans.to_grid(acts[b], image=cell[0], batch=b, tile=cell[1])
                best.append((v, idx[b], p, cell, grid, _shown_image(items[b], inputs, spans, b, cell[0])))
            best.sort(key=lambda t: -t[0])
            del best[k:]
            floor = best[-1][0] if len(best) >= k else -float("inf")
    return TopActivations(
        feature=f, hook_name=site, values=torch.tensor([t[0] for t in best]),
        examples=torch.tensor([t[1] for t in best], dtype=torch.long),
        positions=torch.tensor([t[2] for t in best], dtype=torch.long),
        cells=torch.tensor([t[3] for t in best], dtype=torch.long).reshape(-1, 4),
        grids=[t[4] for t in best], images=[t[5] for t in best])
