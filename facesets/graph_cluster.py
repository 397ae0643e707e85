"""Graph-context clustering: centred embeddings, average linkage on neighbourhood-smoothed
vectors, then a singleton attach pass. Cannot-link (two faces of one photo never share a
cluster) is hard in every step; output is deterministic and independent of row order.

Why: a face's embedding is its identity plus a component every face shares (the model's bias:
faces look alike to it, children and small or blurred faces more so). First that shared part is
estimated and removed: the mean of the centroids of a tight first pass of the seed's HAC (each
tight cluster counts once, so a person with thousands of photos does not become "the mean"),
subtracted from every face (centring; skipped when the first pass finds fewer than
``center_min`` clusters, where that mean would be mostly identities). Then each face is averaged
with its nearest neighbours that are closer than the cut and k-reciprocal (the face is also
among THEIR nearest): a profile next to a frontal view of the same session pulls in, a stranger
who happens to be near one face but has closer faces of his own does not. The seed's average
linkage (``facesets.clustering.cluster_faces``, exact up to ``exact_max``, kNN graph + repair
above) runs unchanged on those vectors. Finally a face left alone may join the cluster of its
nearest neighbour when that neighbour is close and clearly closer than any other cluster (ratio
test): the strong-evidence second pass.

Methods (``cluster.method``; ``facesets.clustering.cluster_faces`` handles the HAC values):

* ``context``: smoothing + HAC + attach pass (this module's ``cluster``).
* ``context-noattach``: smoothing + HAC only (for the benchmark; shows what each part buys).

The benchmark (benchmarks/bench_recall.py, docs/benchmarks.md) compares them with the seed's HAC
at equal pairwise precision on real labelled photos and on the synthetic library.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from facesets.clustering import (
    EXACT_MAX,
    ClusterResult,
    canonical_labels,
    cluster_faces,
    graph_average_linkage,
    group_ids,
    normalize,
)

METHODS = ("context", "context-noattach")
HAC_METHODS = ("auto", "exact", "graph", "dense")


@dataclass(frozen=True)
class ContextParams:
    k: int = 5  # neighbours per face that may be averaged in
    radius: float | None = None  # only neighbours closer than this are averaged in (None: the cut)
    recip: int = 10  # ... and only when the face is among the neighbour's `recip` nearest (0: any)
    center: float = 1.0  # weight of the shared component removed before anything else (0: off)
    center_cut: float = 0.35  # the tight first pass whose cluster centroids estimate it
    center_min: int = 50  # fewer first-pass clusters than this: no centring
    attach_offset: float = 0.06  # singleton attach: nearest neighbour closer than threshold + this
    attach_ratio: float = 0.9  # ... and at most this fraction of the distance to any other cluster
    attach_k: int = 10  # neighbours searched per singleton


# the first version (issue 17, first session): fixed radius, no reciprocity, no centring
CONTEXT_V1 = ContextParams(radius=0.55, recip=0, center=0.0)


def knn(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, indices) of each query's ``k`` nearest rows of ``x`` (inner product).

    Exact (faiss flat) up to 60 000 rows, IVF above (same rule as ``clustering.knn_graph``);
    ties are broken by index so results do not depend on faiss' internal order.
    """
    import faiss

    x = np.ascontiguousarray(x, np.float32)
    q = np.ascontiguousarray(q, np.float32)
    n, d = x.shape
    k = min(k, n)
    if n <= 60_000:
        index = faiss.IndexFlatIP(d)
    else:
        nlist = int(4 * np.sqrt(n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = 10
        rng = np.random.default_rng(0)
        index.train(x[rng.choice(n, size=min(n, nlist * 40), replace=False)])
        index.nprobe = 16
    index.add(x)
    sim, idx = index.search(q, k)
    sim = np.where(idx >= 0, sim, -np.inf)
    order = np.lexsort((idx, -sim), axis=1)  # by similarity desc, then index asc
    return np.take_along_axis(sim, order, 1), np.take_along_axis(idx, order, 1)


def reciprocal(idx: np.ndarray, r: int) -> np.ndarray:
    """``out[i, c]``: face ``i`` is among the first ``r + 1`` columns (itself included) of the
    kNN row of its neighbour ``idx[i, c]``."""
    n = len(idx)
    top = idx[:, : r + 1].astype(np.int64)
    codes = np.sort(np.repeat(np.arange(n, dtype=np.int64), top.shape[1]) * n + top.ravel())
    back = (np.maximum(idx, 0).astype(np.int64) * n + np.arange(n, dtype=np.int64)[:, None]).ravel()
    pos = np.searchsorted(codes, back).clip(0, len(codes) - 1)
    return ((codes[pos] == back) & (idx.ravel() >= 0)).reshape(idx.shape)


def center_embeddings(
    keys: np.ndarray, x: np.ndarray, g: np.ndarray, weight: float, cut: float, min_clusters: int, exact_max: int
) -> np.ndarray:
    """``x`` minus ``weight`` times the mean of the unit centroids of the seed's HAC at ``cut``
    (each tight cluster counts once), re-normalised; ``x`` itself when that pass finds fewer than
    ``min_clusters`` clusters (the mean would be mostly the identities themselves)."""
    if weight <= 0:
        return x
    lab = cluster_faces(keys, x, g, cut, exact_max=exact_max).labels
    m = int(lab.max()) + 1 if len(lab) else 0
    if m < min_clusters:
        return x
    c = np.zeros((m, x.shape[1]), np.float64)
    np.add.at(c, lab, np.asarray(x, np.float64))
    return normalize(np.asarray(x, np.float64) - weight * normalize(c).mean(0))


def smooth_embeddings(
    x: np.ndarray,
    g: np.ndarray,
    k: int,
    radius: float,
    nbrs: tuple[np.ndarray, np.ndarray] | None = None,
    recip: int = 0,
) -> np.ndarray:
    """Each face plus its up-to-``k`` nearest faces closer than ``radius``, similarity-weighted,
    re-normalised. Faces of the face's own photo are never averaged in (cannot-link). With
    ``recip`` > 0 only k-reciprocal neighbours count (the face is among the neighbour's ``recip``
    nearest). ``nbrs``: a precomputed ``knn(x, x, >= max(k, recip) + 1)`` (similarities, indices)."""
    n = len(x)
    if n <= 1 or k <= 0:
        return x
    sim, idx = nbrs if nbrs is not None else knn(x, x, max(k, recip) + 1 + 4)  # + itself + own photo
    ok = (idx >= 0) & (sim > 1.0 - radius)
    ok &= g[np.maximum(idx, 0)] != g[:, None]  # drops the face itself too
    if recip > 0:
        ok &= reciprocal(idx, recip)
    rank = np.cumsum(ok, axis=1)
    ok &= rank <= k
    w = np.where(ok, sim, 0.0).astype(np.float64)
    y = np.asarray(x, np.float64).copy()
    flat = ok.ravel()
    rows = np.repeat(np.arange(n), idx.shape[1])[flat]
    np.add.at(y, rows, w.ravel()[flat][:, None] * x[idx.ravel()[flat]])
    return normalize(y)


def attach_singletons(
    x: np.ndarray,
    g: np.ndarray,
    labels: np.ndarray,
    max_dist: float,
    ratio: float,
    k: int,
    nbrs: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """A face alone in its cluster joins the cluster of its nearest neighbour when that
    neighbour is closer than ``max_dist``, at most ``ratio`` times as far as the nearest face of
    any other cluster, and the cluster holds no face of its photo. Only clusters of >= 2 faces
    (before this pass) take faces, so nothing chains; decisions read the original embeddings.
    ``nbrs``: a precomputed ``knn(x, x, ...)`` of all faces (its first ``k + 1`` columns are used)."""
    labels = np.asarray(labels).copy()
    sizes = np.bincount(labels)
    single = np.flatnonzero(sizes[labels] == 1)
    if not len(single) or len(single) == len(labels):
        return labels
    if nbrs is not None:
        sim, idx = nbrs[0][single, : k + 1], nbrs[1][single, : k + 1]
    else:
        sim, idx = knn(x, x[single], k + 1)
    # photos per cluster, to keep cannot-link hard
    pairs = set(zip(labels.tolist(), g.tolist(), strict=True))
    new = labels.copy()
    for row, i in enumerate(single):
        best, best_d, other_d = -1, np.inf, np.inf
        for s, j in zip(sim[row], idx[row], strict=True):
            if j < 0 or j == i or g[j] == g[i]:
                continue
            c, d = labels[j], 1.0 - float(s)
            if sizes[c] < 2:
                other_d = min(other_d, d)  # another singleton counts as another candidate identity
                if best < 0:
                    break  # the nearest face is alone too: no evidence for any cluster
                continue
            if best < 0:
                best, best_d = c, d
            elif c != best:
                other_d = min(other_d, d)
                break
        if best >= 0 and best_d < max_dist and best_d <= ratio * other_d and (best, g[i]) not in pairs:
            new[i] = best
            pairs.add((best, g[i]))  # two lone faces of one photo never join one cluster
    return new


def cluster(
    keys: Sequence[str],
    emb: np.ndarray,
    groups: Sequence,
    threshold: float,
    method: str = "context",
    exact_max: int = EXACT_MAX,
    k: int = 32,
    params: ContextParams | None = None,
) -> ClusterResult:
    """Same arguments as ``clustering.cluster_faces`` (``k`` = the HAC's kNN graph), plus the
    method: one of ``METHODS``, or an HAC method (passed through to ``cluster_faces``)."""
    if method in HAC_METHODS:
        return cluster_faces(keys, emb, groups, threshold, method=method, exact_max=exact_max, k=k)
    if method not in METHODS:
        raise ValueError(f"unknown cluster method {method!r} (allowed: {', '.join(HAC_METHODS + METHODS)})")
    p = params or ContextParams()
    keys = np.asarray(keys, dtype=object).astype(str)
    n = len(keys)
    if n == 0:
        return ClusterResult(np.zeros(0, np.int64), method)
    order = np.argsort(keys, kind="stable")  # row order never matters
    g = group_ids(np.asarray(groups, dtype=object)[order])
    x = center_embeddings(
        keys[order], normalize(np.asarray(emb)[order]), g, p.center, p.center_cut, p.center_min, exact_max
    )
    # one kNN search on the centred embeddings serves the smoothing, the attach pass and (above
    # exact_max) the HAC's candidate graph
    big = n > exact_max
    nbrs = knn(x, x, max(p.k + 5, p.recip + 1, p.attach_k + 1, k + 1 if big else 0))
    y = smooth_embeddings(x, g, p.k, threshold if p.radius is None else p.radius, nbrs, p.recip)
    if big:  # the graph path: the kNN candidate graph, exact sums, then the cluster-level repair
        rows = np.repeat(np.arange(n), nbrs[1].shape[1])
        cols = nbrs[1].ravel()
        keep = (cols >= 0) & (cols != rows)
        edges = np.stack([np.minimum(rows, cols)[keep], np.maximum(rows, cols)[keep]], 1)
        lab = graph_average_linkage(y, g, threshold, edges=edges, repair=True)
    else:
        lab = cluster_faces(keys[order], y, g, threshold, method="exact").labels
    if method == "context":
        lab = attach_singletons(x, g, lab, threshold + p.attach_offset, p.attach_ratio, p.attach_k, nbrs)
    lab = canonical_labels(lab, keys[order])
    out = np.empty(n, np.int64)
    out[order] = lab
    return ClusterResult(out, method)
