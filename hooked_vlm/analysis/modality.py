"""Modality separation and neighbourhood overlap of residual representations, per layer.

The Narrow Gate paper's measures on the residual stream (decoder layer outputs,
``blocks.{l}.hook_resid_post``, no final norm):

* :func:`modality_separation`: median and quartiles of |cos| between image-token and text-token
  vectors (``n_tokens`` random tokens of each modality per example) and a cluster-homogeneity
  score of the modality labels (scikit-learn ``homogeneity_score`` of a clustering of the pooled
  vectors on cosine geometry).
* :func:`label_overlap`: neighbourhood overlap between one representation per example (a span,
  averaged over its positions) and given labels: the mean fraction of each point's k nearest
  neighbours (cosine) that share its label.

The paper clusters with DADApy's Advanced Density Peaks; DADApy is optional here: with
``method="adp"`` it is used with the paper's settings (:func:`adp_clusters`; the ``dadapy`` extra),
the default is scikit-learn k-means on unit vectors with one cluster per modality (a different,
simpler clustering: compare trends, not values). The paper's label overlap (DADApy
``return_label_overlap``) uses Euclidean neighbours and weights each point by 1 / its class size;
:func:`neighbourhood_overlap` uses cosine neighbours and an unweighted mean (the same number for
balanced classes and unit-norm vectors).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from ._common import SpanLike, forward_with_hooks, layer_list, span_mask


def _sample_rows(mask: Tensor, n: int, generator: torch.Generator) -> list[Tensor]:
    """Per batch item, ``n`` random positions of ``mask`` (all of them when fewer)."""
    out = []
    for row in mask:
        pos = row.nonzero().flatten().cpu()
        out.append(pos[torch.randperm(len(pos), generator=generator)[:n]])
    return out


@torch.no_grad()
def collect_span_vectors(model: Any, data: dict | Iterable[Any], spans_to_sample: dict[str, SpanLike], *,
                         layers: Sequence[int] | None = None, n_tokens: int | None = 1, reduce: str | None = None,
                         site: str = "blocks.{l}.hook_resid_post", seed: int = 0, batch_size: int = 8,
                         progress: bool = True) -> dict[int, dict[str, tuple[Tensor, Tensor]]]:
    """{layer: {name: (vectors [m, d], example index [m])}} for each named span.

    ``n_tokens`` random positions of the span per example (None = all), or ``reduce="mean"``: one
    vector per example, the mean over the span's positions.
    """
    from .runner import iterate_batches

    layers = layer_list(model, layers)
    g = torch.Generator().manual_seed(seed)
    layer_of = {site.format(l=l): l for l in layers}
    out: dict[int, dict[str, list]] = {l: {k: [] for k in spans_to_sample} for l in layers}
    if isinstance(data, dict):  # one batch
        batches: Iterable = [(list(range(len(data["input_ids"]))), data)]
    else:
        batches = iterate_batches(model, data, batch_size=batch_size, progress=progress, desc="vectors")
    for idx, inputs in batches:
        picked: dict[str, list[Tensor]] = {}

        def grab(act: Tensor, hook: Any) -> None:
            if not picked:
                for name, span in spans_to_sample.items():
                    m = span_mask(hook.spans, span)
                    picked[name] = [r.nonzero().flatten().cpu() for r in m] if reduce == "mean" or n_tokens is None \
                        else _sample_rows(m, n_tokens, g)
            layer = layer_of[hook.name]
            for name, rows in picked.items():
                for b, pos in enumerate(rows):
                    if len(pos) == 0:
                        continue
                    vec = act[b, pos.to(act.device)].float().cpu()
                    vec = vec.mean(0, keepdim=True) if reduce == "mean" else vec
                    out[layer][name].append((vec, torch.full((len(vec),), idx[b])))

        forward_with_hooks(model, inputs, [(name, grab) for name in layer_of], return_type=None)
    return {l: {k: (torch.cat([v for v, _ in vs]), torch.cat([i for _, i in vs])) if vs else
                (torch.empty(0, model.cfg.d_model), torch.empty(0, dtype=torch.long)) for k, vs in d.items()}
            for l, d in out.items()}


def abs_cosine(a: Tensor, b: Tensor) -> Tensor:
    """|cos| between every row of ``a`` and every row of ``b``: [len(a), len(b)]."""
    a = torch.nn.functional.normalize(a.float(), dim=-1)
    b = torch.nn.functional.normalize(b.float(), dim=-1)
    return (a @ b.T).abs()


def cluster_homogeneity(vectors: Tensor | np.ndarray, labels: Sequence[Any] | np.ndarray, method: str = "kmeans",
                        n_clusters: int | None = None, seed: int = 0) -> float:
    """Homogeneity (scikit-learn) of a clustering of ``vectors`` (cosine geometry) w.r.t. ``labels``.

    method: "kmeans" (on unit vectors, ``n_clusters`` default = number of labels), "agglomerative"
    (cosine, average linkage) or "adp" (DADApy Advanced Density Peaks with the paper's settings, see
    :func:`adp_clusters`; needs DADApy and more than 16 points).
    """
    from sklearn.metrics import homogeneity_score

    x = np.asarray(vectors, dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
    k = n_clusters or len(set(labels))
    if method == "kmeans":
        from sklearn.cluster import KMeans

        clusters = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)
    elif method == "agglomerative":
        from sklearn.cluster import AgglomerativeClustering

        clusters = AgglomerativeClustering(n_clusters=k, metric="cosine", linkage="average").fit_predict(x)
    elif method == "adp":
        clusters = adp_clusters(x)
    else:
        raise ValueError(f"method must be 'kmeans', 'agglomerative' or 'adp', got {method!r}")
    return float(homogeneity_score(list(labels), clusters))


#: The Narrow Gate paper's Advanced Density Peaks recipe (their paper_experiments/Fig2_CosSim_Hom.py)
ADP_MAXK, ADP_GRIDE_SCALE, ADP_DENSITY_K, ADP_Z = 128, 3, 16, 1.65


def adp_clusters(vectors: Tensor | np.ndarray, z: float = ADP_Z) -> np.ndarray:
    """DADApy Advanced Density Peaks cluster labels, as in the Narrow Gate paper: cosine distances to the
    ``ADP_MAXK`` (128) nearest neighbours (zero distances regularised), intrinsic dimension = the Gride estimate
    at scale ``ADP_GRIDE_SCALE`` (neighbour ranks 8 -> 16), kNN density with k = 16, merging factor Z = 1.65.
    With fewer than 129 points the neighbour lists hold every other point."""
    try:
        from dadapy import Data
    except ImportError as e:
        raise ImportError("method='adp' needs DADApy (pip install dadapy, or the 'dadapy' extra); "
                          "use 'kmeans' or 'agglomerative'") from e
    x = np.asarray(vectors, dtype=np.float64)
    if len(x) <= ADP_DENSITY_K:
        raise ValueError(f"ADP clustering needs more than {ADP_DENSITY_K} points (kNN density with k = {ADP_DENSITY_K}), "
                         f"got {len(x)}: sample more tokens or examples")
    maxk = min(ADP_MAXK, len(x) - 1)
    d = Data(x, maxk=maxk, verbose=False)
    d.compute_distances(maxk=maxk, metric="cosine")
    d.distances = d.remove_zero_dists(d.distances)
    ids, _, _ = d.return_id_scaling_gride(range_max=maxk)
    d.set_id(ids[ADP_GRIDE_SCALE])
    d.compute_density_kNN(k=ADP_DENSITY_K)
    return np.asarray(d.compute_clustering_ADP(Z=z))


def neighbourhood_overlap(vectors: Tensor | np.ndarray, labels: Sequence[Any] | np.ndarray, k: int = 30) -> float:
    """Mean over points of the fraction of their k nearest neighbours (cosine, self excluded) with the same label."""
    from sklearn.neighbors import NearestNeighbors

    x = np.asarray(vectors, dtype=np.float64)
    lab = np.asarray(labels)
    k = min(k, len(x) - 1)
    if k < 1:
        raise ValueError("neighbourhood overlap needs at least 2 points")
    nn = NearestNeighbors(n_neighbors=k + 1, metric="cosine").fit(x)
    _, idx = nn.kneighbors(x)
    neigh = np.array([[j for j in row if j != i][:k] for i, row in enumerate(idx)])
    return float((lab[neigh] == lab[:, None]).mean())


def modality_separation(model: Any, data: dict | Iterable[Any], *, layers: Sequence[int] | None = None,
                        image_span: SpanLike = "image", text_span: SpanLike = "text", n_tokens: int = 1,
                        pairs: str = "example", homogeneity: bool = True, method: str = "kmeans", seed: int = 0,
                        batch_size: int = 8, progress: bool = True) -> Any:
    """Per layer: |cos| quartiles between image and text vectors and modality-cluster homogeneity.

    pairs: "example" compares the image and text tokens of the same example, "all" every sampled
    image vector with every sampled text vector. Returns a DataFrame (layer, cos_q1, cos_median,
    cos_q3, homogeneity, n_image, n_text).
    """
    import pandas as pd

    vecs = collect_span_vectors(model, data, {"image": image_span, "text": text_span}, layers=layers, n_tokens=n_tokens,
                                seed=seed, batch_size=batch_size, progress=progress)
    rows = []
    for l, d in vecs.items():
        (img, img_ex), (txt, txt_ex) = d["image"], d["text"]
        cos = abs_cosine(img, txt)
        if pairs == "example":
            cos = cos[img_ex[:, None] == txt_ex[None, :]]
        elif pairs != "all":
            raise ValueError(f"pairs must be 'example' or 'all', got {pairs!r}")
        q1, med, q3 = torch.quantile(cos.flatten(), torch.tensor([0.25, 0.5, 0.75])).tolist()
        row = dict(layer=l, cos_q1=q1, cos_median=med, cos_q3=q3, n_image=len(img), n_text=len(txt))
        if homogeneity:
            row["homogeneity"] = cluster_homogeneity(torch.cat([img, txt]), [0] * len(img) + [1] * len(txt),
                                                     method=method, seed=seed)
        rows.append(row)
    return pd.DataFrame(rows)


def _if_present(name: str) -> Any:
    """A span that is empty when the family has no span ``name`` (e.g. LLaVA has no eoi)."""
    return lambda spans: spans.mask(name) if name in spans else torch.zeros_like(spans.mask("pad"))


def label_overlap(model: Any, data: dict | Iterable[Any], labels: Sequence[Any] | np.ndarray, *,
                  spans: dict[str, SpanLike] | None = None, layers: Sequence[int] | None = None, k: int = 30,
                  batch_size: int = 8, progress: bool = True) -> Any:
    """Per layer and span: neighbourhood overlap of one vector per example (the span's mean) with ``labels``.

    Default spans: ``eoi`` (if the family has it), ``image_last`` and ``image`` (the mean image
    token), as in the paper's gate search. Returns a DataFrame (layer, span, overlap, k).
    """
    import pandas as pd

    if spans is None:
        spans = {"eoi": _if_present("eoi"), "image_last": "image_last", "image_mean": "image"}
    vecs = collect_span_vectors(model, data, spans, layers=layers, reduce="mean", batch_size=batch_size,
                                progress=progress, n_tokens=None)
    labels = np.asarray(list(labels))
    rows = []
    for l, d in vecs.items():
        for name, (v, ex) in d.items():
            if len(v) < 2:
                continue
            rows.append(dict(layer=l, span=name, overlap=neighbourhood_overlap(v, labels[ex.numpy()], k), k=k))
    return pd.DataFrame(rows)
