"""Modality separation, cluster homogeneity and label overlap vs hand computations, crafted inputs with a
known answer, and (where DADApy is installed) the paper's DADApy estimators called directly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hooked_vlm.analysis import (cluster_homogeneity, collect_span_vectors, label_overlap, modality_separation,
                                 neighbourhood_overlap, span_mask)
from tests import tiny_analysis as ta

try:
    import dadapy
except ImportError:
    dadapy = None
needs_dadapy = pytest.mark.skipif(dadapy is None, reason="dadapy not installed (runs in the make test-min venv)")

ATOL = 1e-5


def _data(n=4, text_after=None):
    _, hf = ta.model_and_hf()
    return [ta.example(hf, s, text_after=text_after or 3 + s % 3) for s in range(n)]


def _resid(model, ex, layer):
    """(residual stream after ``layer`` [pos, d], image positions, text positions) from a cache and the token ids."""
    _, cache = model.run_with_cache(**ex, names_filter=f"blocks.{layer}.hook_resid_post")
    ids = ex["input_ids"][0].tolist()
    boi, eoi = ids.index(ta.BOI), ids.index(ta.EOI)
    image = [p for p, t in enumerate(ids) if t == ta.tiny.IMAGE_TOKEN]
    text = [p for p in range(len(ids)) if not boi <= p <= eoi]
    return cache[f"blocks.{layer}.hook_resid_post"][0], image, text


def _homogeneity_by_hand(labels, clusters):
    """1 - H(label | cluster) / H(label), natural logs, from the contingency table."""
    labels, clusters = np.asarray(labels), np.asarray(clusters)
    n = len(labels)
    p_label = np.array([np.mean(labels == c) for c in np.unique(labels)])
    h = -(p_label * np.log(p_label)).sum()
    h_cond = 0.0
    for k in np.unique(clusters):
        inside = labels[clusters == k]
        p = np.array([np.mean(inside == c) for c in np.unique(inside)])
        h_cond -= len(inside) / n * (p * np.log(p)).sum()
    return 1.0 if h == 0 else 1 - h_cond / h


def _blobs(n=12, d=6, seed=1, spread=0.05):
    """Three tight, well separated directions: every clustering method finds exactly these blobs."""
    rng = np.random.default_rng(seed)
    centres = np.eye(d)[:3] * 10
    return np.concatenate([c + rng.normal(size=(n, d)) * spread for c in centres]), np.repeat([0, 1, 2], n)


def test_modality_separation_quartiles_equal_hand_cosines():
    model, _ = ta.model_and_hf()
    data = _data(6)
    # all positions (n_tokens larger than any span): quartiles of |cos| between same-example image and text tokens
    full = modality_separation(model, data[:2], layers=[1], n_tokens=10**6, homogeneity=False, progress=False)
    every = modality_separation(model, data[:2], layers=[1], n_tokens=10**6, homogeneity=False, pairs="all",
                                progress=False)
    same, cross = [], []
    rows = [_resid(model, ex, 1) for ex in data[:2]]
    unit = lambda v: torch.nn.functional.normalize(v, dim=-1)
    for r, image, text in rows:
        same.append((unit(r[image]) @ unit(r[text]).T).abs().flatten())
    all_img = torch.cat([unit(r[i]) for r, i, _ in rows])
    all_txt = torch.cat([unit(r[t]) for r, _, t in rows])
    cross = (all_img @ all_txt.T).abs().flatten()
    qs = torch.tensor([0.25, 0.5, 0.75])
    cols = ["cos_q1", "cos_median", "cos_q3"]
    assert np.abs(full[cols].values[0] - torch.quantile(torch.cat(same), qs).numpy()).max() <= ATOL
    assert np.abs(every[cols].values[0] - torch.quantile(cross, qs).numpy()).max() <= ATOL
    assert full.n_image[0] == 32 and full.n_text[0] == len(rows[0][2]) + len(rows[1][2])
    # sampled (n_tokens=2, the paper's 1 random token per example is n_tokens=1): the sampled vectors are 2
    # distinct image / text rows of their own example, and the quartiles are those of their same-example |cos|
    vecs = collect_span_vectors(model, data, {"image": "image", "text": "text"}, layers=[0, 2], n_tokens=2, seed=3,
                                progress=False)
    df = modality_separation(model, data, layers=[0, 2], n_tokens=2, seed=3, homogeneity=False, progress=False)
    picked = []
    for layer in (0, 2):
        hand_rows = [_resid(model, ex, layer) for ex in data]
        (img, img_ex), (txt, txt_ex) = vecs[layer]["image"], vecs[layer]["text"]
        assert img_ex.tolist() == txt_ex.tolist() == [i for i in range(6) for _ in range(2)]
        for vec, ex_of, which in ((img, img_ex, 1), (txt, txt_ex, 2)):
            for e in range(6):
                mine = vec[ex_of == e]
                r, pos = hand_rows[e][0], hand_rows[e][which]
                match = [int(((r[pos] - v).abs().max(1).values <= 1e-6).nonzero()[0]) for v in mine]
                assert len(set(match)) == 2  # two distinct rows of this example's span
                picked.append(sorted(match))
        cos = [(unit(img[img_ex == e]) @ unit(txt[txt_ex == e]).T).abs().flatten() for e in range(6)]
        hand = torch.quantile(torch.cat(cos), qs).numpy()
        assert np.abs(df[df.layer == layer][cols].values[0] - hand).max() <= ATOL
    assert sum(p != [0, 1] for p in picked) >= 12  # random picks, not the first two rows (measured 22 of 24)


def test_cluster_homogeneity_equals_the_entropy_formula_on_known_clusters():
    x, blob = _blobs()
    rng = np.random.default_rng(2)
    for labels in (blob, np.array([0] * 12 + [1] * 12 + [0] * 6 + [1] * 6), rng.integers(0, 3, size=36)):
        for method in ("kmeans", "agglomerative"):
            got = cluster_homogeneity(x, labels, method=method, n_clusters=3)
            assert abs(got - _homogeneity_by_hand(labels, blob)) <= 1e-9, (method, labels)
    # the worked example: blobs 0 and 1 pure, blob 2 half and half -> H(C|K) = ln 2 / 3, H(C) = ln 2
    half = np.array([0] * 12 + [1] * 12 + [0] * 6 + [1] * 6)
    assert abs(cluster_homogeneity(x, half, n_clusters=3) - 2 / 3) <= 1e-9
    mixed = np.concatenate([x[:6], x[12:18], x[6:12], x[18:24]])  # labels 0/1 each half blob 0, half blob 1
    assert abs(cluster_homogeneity(mixed, [0] * 12 + [1] * 12, n_clusters=2)) <= 1e-9


def _crafted_resid(parity_split):
    """Hook for blocks.1.hook_resid_post: image and text rows become direction u or v plus a little noise, by
    modality (parity_split=False) or by the parity of the position (True: each direction holds both modalities)."""
    g = torch.Generator().manual_seed(0)
    d = 32
    u, v = torch.zeros(d), torch.zeros(d)
    u[0], v[1] = 10.0, 10.0

    def craft(t, hook):
        out = t.clone()
        img = span_mask(hook.spans, "image")
        txt = span_mask(hook.spans, "text")
        for b in range(t.shape[0]):
            for p in range(t.shape[1]):
                if not (img[b, p] or txt[b, p]):
                    continue
                first = (p % 2 == 0) if parity_split else bool(img[b, p])
                out[b, p] = (u if first else v) + 0.01 * torch.randn(d, generator=g)
        return out
    return craft


def test_modality_homogeneity_on_crafted_residuals():
    """Image and text rows made to point in two directions -> homogeneity 1; every direction holding image and
    text rows in the same 2:1 proportion as the whole set -> homogeneity 0 (k-means finds the two directions)."""
    model, _ = ta.model_and_hf()
    data = _data(2, text_after=5)  # per example: 16 image tokens (8 at even positions) and 8 text (4 even)
    for parity_split, want in ((False, 1.0), (True, 0.0)):
        with model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", _crafted_resid(parity_split))]):
            df = modality_separation(model, data, layers=[1], n_tokens=10**6, progress=False)
        assert abs(df.homogeneity[0] - want) <= 1e-9, parity_split


def _knn_by_hand(x, k):
    """Indices of the k nearest other points by cosine similarity, brute force."""
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = unit @ unit.T
    np.fill_diagonal(cos, -np.inf)
    return np.argsort(-cos, axis=1, kind="stable")[:, :k]


def test_neighbourhood_overlap_equals_brute_force_and_sklearn():
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5))
    labels = rng.integers(0, 3, size=40)
    for k in (1, 3, 10):
        nn = _knn_by_hand(x, k)
        hand = (labels[nn] == labels[:, None]).mean()
        _, idx = NearestNeighbors(n_neighbors=k + 1, metric="cosine", algorithm="brute").fit(x).kneighbors(x)
        assert (idx[:, 0] == np.arange(40)).all()
        sk = (labels[idx[:, 1:]] == labels[:, None]).mean()
        assert abs(neighbourhood_overlap(x, labels, k=k) - hand) <= 1e-12 and abs(sk - hand) <= 1e-12
    separated = np.concatenate([rng.normal(size=(6, 5)) + 20, rng.normal(size=(6, 5)) - 20])
    assert neighbourhood_overlap(separated, [0] * 6 + [1] * 6, k=3) == 1.0
    assert neighbourhood_overlap(separated, [0, 1] * 6, k=5) <= 0.5


def test_label_overlap_equals_brute_force_on_span_means_from_caches():
    model, _ = ta.model_and_hf()
    data = _data(8)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    df = label_overlap(model, data, labels, layers=[0, 2], k=3, batch_size=3, progress=False)
    assert sorted(zip(df.layer, df.span)) == sorted((l, s) for l in (0, 2) for s in ("eoi", "image_last", "image_mean"))
    for layer in (0, 2):
        vec = {"eoi": [], "image_last": [], "image_mean": []}
        for ex in data:
            r, image, _ = _resid(model, ex, layer)
            eoi = ex["input_ids"][0].tolist().index(ta.EOI)
            vec["eoi"].append(r[eoi].double().numpy())
            vec["image_last"].append(r[image[-1]].double().numpy())
            vec["image_mean"].append(r[image].double().mean(0).numpy())
        for name, v in vec.items():
            nn = _knn_by_hand(np.stack(v), 3)
            hand = (labels[nn] == labels[:, None]).mean()
            got = df[(df.layer == layer) & (df.span == name)].overlap.item()
            assert abs(got - hand) <= 1e-9, (layer, name)


def test_label_overlap_on_duplicated_images_has_a_known_answer():
    """Each image twice (same tokens, same pixels): with k = 1 every point's nearest neighbour is its twin, so the
    overlap is 1 for labels that follow the image and 0 for labels that split every pair."""
    model, hf = ta.model_and_hf()
    data = [ta.example(hf, s, text_after=4) for s in (0, 1, 2, 3) for _ in range(2)]
    twins = np.repeat([0, 1, 2, 3], 2)
    split = np.array([0, 1] * 4)
    for labels, want in ((twins, 1.0), (split, 0.0)):
        df = label_overlap(model, data, labels, layers=[1], k=1, progress=False)
        assert (df.overlap == want).all(), (want, df)


@needs_dadapy
def test_adp_homogeneity_equals_dadapy_called_directly():
    """The paper's recipe (their paper_experiments/Fig2_CosSim_Hom.py), written out here: cosine distances to 128
    neighbours, zero distances regularised, Gride intrinsic dimension at scale 3, kNN density k = 16, ADP Z = 1.65."""
    from dadapy import Data
    from sklearn.metrics import homogeneity_score

    def paper(x, labels, gride=True):
        d = Data(np.asarray(x, dtype=np.float64), verbose=False)
        maxk = min(128, len(x) - 1)
        d.compute_distances(metric="cosine", maxk=maxk)
        d.distances = d.remove_zero_dists(d.distances)
        if gride:
            ids, _, _ = d.return_id_scaling_gride(range_max=maxk)
            d.set_id(ids[3])
        else:  # what hooked_vlm did before: the 2NN intrinsic dimension
            d.compute_id_2NN()
        d.compute_density_kNN(k=16)
        return homogeneity_score(labels, d.compute_clustering_ADP(Z=1.65))

    x, blob = _blobs(n=20, spread=0.3)
    assert cluster_homogeneity(x, blob, method="adp") == pytest.approx(1.0, abs=1e-12) == paper(x, blob)
    half = np.array([0] * 20 + [1] * 20 + [0] * 10 + [1] * 10)
    assert abs(cluster_homogeneity(x, half, method="adp") - 2 / 3) <= 1e-9  # blob 2 split: as by hand above
    rng = np.random.default_rng(5)
    noisy = rng.normal(size=(150, 8))  # more points than the 128 neighbours kept
    lab = rng.integers(0, 2, size=150)
    assert cluster_homogeneity(noisy, lab, method="adp") == paper(noisy, lab)
    # four blobs of different spreads (160 points): here the intrinsic-dimension estimate decides the merging
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 12)) * 1.5
    blobs4 = np.concatenate([c + rng.normal(size=(40, 12)) * rng.uniform(0.3, 1.2) for c in centres])
    lab4 = np.repeat(np.arange(4), 40)
    got = cluster_homogeneity(blobs4, lab4, method="adp")
    assert abs(got - paper(blobs4, lab4)) <= 1e-12  # measured 0.5
    assert abs(got - paper(blobs4, lab4, gride=False)) > 0.1  # measured 0.918 with the 2NN dimension
    # on the model: the image and text residuals of two examples at layer 1, collected by hand from caches
    model, _ = ta.model_and_hf()
    data = _data(2, text_after=5)
    df = modality_separation(model, data, layers=[1], n_tokens=10**6, method="adp", progress=False)
    rows = [_resid(model, ex, 1) for ex in data]
    vecs = [r[i].double().numpy() for r, i, _ in rows] + [r[t].double().numpy() for r, _, t in rows]
    n_img = sum(len(i) for _, i, _ in rows)
    pooled = np.concatenate(vecs)
    hand = paper(pooled, [0] * n_img + [1] * (len(pooled) - n_img))
    assert abs(df.homogeneity[0] - hand) <= 1e-9
    with pytest.raises(ValueError, match="more than 16 points"):
        cluster_homogeneity(x[:16], blob[:16], method="adp")


@needs_dadapy
def test_neighbourhood_overlap_equals_dadapy_label_overlap():
    """DADApy's return_label_overlap (the paper's metric): on cosine distances unweighted it is ours; with its
    defaults (Euclidean, class-weighted) it is ours on unit vectors with balanced classes."""
    from dadapy import Data

    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 7))
    imbalanced = rng.integers(0, 3, size=60)
    d = Data(x.copy(), verbose=False)
    d.compute_distances(metric="cosine", maxk=30)
    assert abs(d.return_label_overlap(imbalanced, k=30, weighted=False) - neighbourhood_overlap(x, imbalanced, k=30)) <= 1e-12
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    balanced = np.repeat([0, 1, 2], 20)
    default = Data(unit.copy(), maxk=30, verbose=False).return_label_overlap(balanced, k=30)
    assert abs(default - neighbourhood_overlap(x, balanced, k=30)) <= 1e-12
