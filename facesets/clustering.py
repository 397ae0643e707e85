"""The cluster engine: average-linkage clustering of face embeddings with cannot-link.

Everything identity-related calls this module: the raw ``cluster`` stage, refine (centroid
merge, outlier rejection), extend / mixed-bucket routing (nearest identity, cluster the rest).

Distances are cosine distances ``1 - a·b`` of L2-normalised embeddings. For average linkage
the distance between two clusters has a closed form in their embedding *sums*:
``mean_{a∈A,b∈B} (1 - a·b) = 1 - (ΣA·ΣB) / (|A||B|)``, so cluster distances are always exact,
whatever the size of the clusters.

Two faces of one photo never share a cluster (cannot-link): any merge that would put them
together is forbidden, which for average linkage is the same as an infinite distance between
the two faces (the linkage stays reducible).

One algorithm (``graph_average_linkage``) on two candidate graphs, plus a reference:

* The key fact: in average linkage, two clusters can only come under the threshold if some
  pair of their faces is under it, and a cluster pair at or above the threshold can only come
  under it again through a merge with a cluster that is under it (Lance–Williams). So HAC on
  the graph of all face pairs under the threshold, dropping pairs as they rise above it, is
  *exactly* average-linkage HAC, without an n×n matrix.
* ``exact`` (default up to ``exact_max`` faces, unless that graph would hold more than
  ``AUTO_PAIRS_PER_FACE`` pairs per face: giant identities): that graph, found by an exact range
  search. Identical results to textbook HAC (tested against SciPy on real and synthetic data).
* ``graph`` (above ``exact_max``): a kNN candidate graph (faiss; IVF above 60k faces) instead,
  so memory stays linear; only the candidate set is approximate, cluster distances stay exact.
  When the graph is exhausted, a *repair* looks for the cluster pairs still under the
  threshold among the clusters themselves (average-linkage distance = ``1 - m_A·m_B`` of the
  cluster means, so an inner-product search over means finds them) and HAC goes on over
  them: no two final clusters are under the threshold, as in exact HAC. Quality against
  exact HAC is measured in benchmarks/.
* ``dense``: SciPy's average linkage on the full condensed matrix, cannot-link pairs set to a
  huge distance (Lance–Williams never mixes it into other pairs). The O(n²) reference.

Results are deterministic and independent of row order: rows are ordered by face key first,
and clusters are numbered by size (largest first), then by their smallest face key.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

BIG = 1e12  # "infinite" distance for cannot-link pairs in the exact path
EXACT_MAX = 30_000  # faces; see docs/benchmarks.md (cluster engine) for why
REPAIR_EXACT_MAX = 250_000  # clusters: above, the graph path's repair searches each one's nearest only
# auto takes the exact path only while its graph stays sparse: with a few giant identities (a
# personal library's owner and children) nearly all their faces are within the cut of each other
# and the graph holds ~size^2 / 2 pairs (20k faces, two of 4,000: 16 M pairs, 30 s) where the kNN
# graph + repair costs k per face (2.9 s, BCubed F the same; docs/benchmarks.md)
AUTO_PAIRS_PER_FACE = 64
AUTO_PAIRS_FLOOR = 1_000_000  # small libraries stay exact whatever their density


# --------------------------------------------------------------------------- helpers


def normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def group_ids(groups: Sequence) -> np.ndarray:
    """Photo ids (e.g. sha256 strings) -> small ints; faces with equal ids cannot link."""
    _, inv = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    return inv.astype(np.int64)


def canonical_labels(labels: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Renumber clusters 0.. by size (desc), then smallest key (asc)."""
    labels = np.asarray(labels)
    uniq, inv, counts = np.unique(labels, return_inverse=True, return_counts=True)
    first_key = np.empty(len(uniq), dtype=object)
    order = np.argsort(keys, kind="stable")
    seen = np.zeros(len(uniq), bool)
    for i in order:
        c = inv[i]
        if not seen[c]:
            seen[c] = True
            first_key[c] = keys[i]
    rank = sorted(range(len(uniq)), key=lambda c: (-counts[c], first_key[c]))
    new = np.empty(len(uniq), np.int64)
    new[rank] = np.arange(len(uniq))
    return new[inv]


def cannot_link_pairs(groups: np.ndarray) -> np.ndarray:
    """All (i, j), i < j, of rows that share a photo. Shape (m, 2)."""
    order = np.argsort(groups, kind="stable")
    g = groups[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    ends = np.r_[starts[1:], len(g)]
    out = []
    for s, e in zip(starts, ends, strict=True):
        if e - s > 1:
            idx = np.sort(order[s:e])
            ii, jj = np.triu_indices(len(idx), 1)
            out.append(np.stack([idx[ii], idx[jj]], 1))
    return np.concatenate(out) if out else np.zeros((0, 2), np.int64)


# --------------------------------------------------------------------------- dense reference


def dense_average_linkage(emb: np.ndarray, groups: np.ndarray, threshold: float) -> np.ndarray:
    """Textbook average-linkage HAC (SciPy) with cannot-link, cut below ``threshold``.

    O(n²) memory and time: the reference the other paths are tested against.
    """
    from scipy.cluster.hierarchy import fcluster, linkage

    n = len(emb)
    if n <= 1:
        return np.zeros(n, np.int64)
    x = np.asarray(emb, np.float64)
    cond = np.empty(n * (n - 1) // 2, np.float64)
    pos = 0
    for i in range(n - 1):  # row by row: no n×n matrix
        row = 1.0 - x[i + 1 :] @ x[i]
        cond[pos : pos + len(row)] = np.maximum(row, 0.0)
        pos += len(row)
    cl = cannot_link_pairs(groups)
    if len(cl):
        i, j = cl[:, 0], cl[:, 1]
        cond[n * i - i * (i + 1) // 2 + (j - i - 1)] = BIG
    z = linkage(cond, method="average")
    del cond
    # merge while distance < threshold (strict, like sklearn's distance_threshold)
    return fcluster(z, np.nextafter(threshold, -np.inf), criterion="distance").astype(np.int64) - 1


# --------------------------------------------------------------------------- graph (scalable)


def epsilon_graph(
    emb: np.ndarray, threshold: float, max_pairs: int = 60_000_000, block: int = 2048, tile: int = 8192
) -> np.ndarray | None:
    """Every pair (i, j), i < j, closer than ``threshold`` (exact; blocked BLAS products).

    Only the upper triangle is computed, in ``block`` x ``tile`` products (memory ~ 64 MB
    whatever n). Also works on unnormalised vectors (cluster means): it keeps the pairs whose
    inner product is above ``1 - threshold``. Returns None when there are more than
    ``max_pairs`` such pairs (memory guard).
    """
    x = np.ascontiguousarray(emb, dtype=np.float32)
    n = len(x)
    cut = np.float32(1.0 - threshold - 1e-4)  # a small margin: exact distances are recomputed later
    parts, total = [], 0
    for s in range(0, n, block):
        q = x[s : s + block]
        for c in range(s, n, tile):
            rows, cols = np.nonzero(q @ x[c : c + tile].T > cut)
            rows, cols = rows + s, cols + c
            keep = cols > rows  # in the tiles on the diagonal, only j > i
            pairs = np.stack([rows[keep], cols[keep]], 1).astype(np.int64)
            parts.append(pairs)
            total += len(pairs)
            if total > max_pairs:
                return None
    return np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)


def knn_graph(emb: np.ndarray, k: int) -> np.ndarray:
    """Candidate edges (i, j), i < j, from each face's k nearest neighbours (inner product)."""
    import faiss

    x = np.ascontiguousarray(emb, dtype=np.float32)
    n, d = x.shape
    k = min(k + 1, n)
    if n <= 60_000:
        index = faiss.IndexFlatIP(d)
    else:
        nlist = int(4 * np.sqrt(n))
        quant = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quant, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = 10  # coarse centroids only route the search; 10 k-means rounds suffice
        rng = np.random.default_rng(0)
        index.train(x[rng.choice(n, size=min(n, nlist * 40), replace=False)])
        index.nprobe = 16
    index.add(x)
    _, nbr = index.search(x, k)
    rows = np.repeat(np.arange(n), nbr.shape[1])
    cols = nbr.reshape(-1)
    ok = cols >= 0
    return _unique_pairs(np.stack([rows[ok], cols[ok]], 1), n)  # sorted by (i, j), as np.unique was


def _edge_dist(sums: np.ndarray, cnt: np.ndarray, edges: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Exact average-linkage distance of each candidate pair, from cluster sums."""
    out = np.empty(len(edges), np.float64)
    for s in range(0, len(edges), chunk):
        a, b = edges[s : s + chunk, 0], edges[s : s + chunk, 1]
        out[s : s + chunk] = 1.0 - np.einsum("ij,ij->i", sums[a], sums[b]) / (cnt[a] * cnt[b])
    return out


def _sorted_unique(a: np.ndarray, kind: str | None = None) -> np.ndarray:
    """np.unique for int64 codes by sorting (much faster here than numpy's hash path)."""
    a = np.sort(a, kind=kind)
    return a[np.r_[True, a[1:] != a[:-1]]] if len(a) else a


def _unique_pairs(pairs: np.ndarray, n: int) -> np.ndarray:
    if not len(pairs):
        return np.zeros((0, 2), np.int64)
    lo, hi = np.minimum(pairs[:, 0], pairs[:, 1]), np.maximum(pairs[:, 0], pairs[:, 1])
    keep = lo != hi
    code = _sorted_unique(lo[keep] * n + hi[keep])
    return np.stack([code // n, code % n], 1)


@dataclass
class _GraphState:
    """Clusters as sums/counts over face ids; candidate pairs (lo < hi) with exact distances."""

    sums: np.ndarray
    cnt: np.ndarray
    parent: np.ndarray
    edges: np.ndarray
    dist: np.ndarray
    cl_codes: np.ndarray  # sorted lo * n + hi of cannot-linked cluster pairs

    @property
    def n(self) -> int:
        return len(self.cnt)


def _merged_pairs(
    st: _GraphState, ea: np.ndarray, eb: np.ndarray, d: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The candidate pairs of merged clusters, from the old pairs that touched them.

    ``ea``/``eb`` are the old pairs' ends already mapped to the merged clusters, ``d`` each old
    pair's distance and ``w`` its |A||B| (sizes before the merge). Where every pair of old parts
    of a new pair was a candidate, its distance is their weighted mean (Lance–Williams for
    average linkage: ``Σ|A_i||B_j| d_ij / (|A||B|)``, the same mean over face pairs); the rest
    are computed from the cluster sums. Returns (lo, hi, distances) with lo < hi.
    """
    n = st.n
    a, b = np.minimum(ea, eb).astype(np.int64), np.maximum(ea, eb).astype(np.int64)
    keep = a != b
    code = a[keep] * n + b[keep]
    order = np.argsort(code)
    code, w, d = code[order], w[keep][order], d[keep][order]
    if not len(code):
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    first = np.flatnonzero(np.r_[True, code[1:] != code[:-1]])
    code = code[first]
    lo, hi = code // n, code % n
    need = st.cnt[lo] * st.cnt[hi]  # sizes after the merge
    full = np.add.reduceat(w, first) == need  # counts are whole numbers: exact
    dist = np.empty(len(code))
    dist[full] = np.add.reduceat(w * d, first)[full] / need[full]
    dist[~full] = _edge_dist(st.sums, st.cnt, np.stack([lo[~full], hi[~full]], 1))
    return lo, hi, dist


ROUND_MIN_FRACTION = 0.002  # the rounds stop when one merges fewer than this share of the clusters
ROUND_MIN_FRACTION_LARGE = 0.0005  # the same above LONG_ROUNDS_FROM faces
LONG_ROUNDS_FROM = 500_000


def _rnn_rounds(
    st: _GraphState, threshold: float, min_fraction: float = ROUND_MIN_FRACTION, max_rounds: int = 400
) -> None:
    """Merge all reciprocal nearest-neighbour pairs under the threshold, in vectorised rounds.

    For a reducible linkage (average linkage is) merging a reciprocal-nearest pair never
    changes the final hierarchy, so any number of them can merge at once. The early rounds
    do most of the merges cheaply; once a round merges few clusters the heap phase takes over.
    A round recomputes only the pairs of the clusters it merged (``_merged_pairs``); the
    other pairs keep their distances, all under the threshold.
    """
    n = st.n
    alive = int((st.parent == np.arange(n)).sum())
    ok = st.dist < threshold
    ix = np.int32 if n < 2**31 else np.int64  # the pairs' ends, in two flat arrays: half the memory traffic
    ea, eb, d = st.edges[ok, 0].astype(ix), st.edges[ok, 1].astype(ix), st.dist[ok]
    cl_a, cl_b = st.cl_codes // n, st.cl_codes % n  # cannot-linked cluster pairs, sorted by code
    try:
        for _ in range(max_rounds):
            if not len(d):
                return
            # each cluster's nearest candidate (ties: the smallest id), in O(edges) without a sort
            near = np.full(n, np.inf)
            np.minimum.at(near, ea, d)
            np.minimum.at(near, eb, d)
            best = np.full(n, n, np.int64)
            at = d == near[ea]
            np.minimum.at(best, ea[at], eb[at])
            at = d == near[eb]
            np.minimum.at(best, eb[at], ea[at])
            cand = np.flatnonzero(best < n)
            best[best == n] = -1
            keep_id = cand[(best[best[cand]] == cand) & (cand < best[cand])]
            if len(keep_id) < max(1, min_fraction * alive):
                return
            gone_id = best[keep_id]
            moved = np.zeros(n, bool)
            moved[keep_id] = True
            moved[gone_id] = True
            touched = moved[ea] | moved[eb]
            ta, tb = ea[touched], eb[touched]
            w = st.cnt[ta] * st.cnt[tb]
            st.sums[keep_id] += st.sums[gone_id]
            st.cnt[keep_id] += st.cnt[gone_id]
            st.parent[gone_id] = keep_id
            alive -= len(keep_id)
            relabel = np.arange(n, dtype=ix)
            relabel[gone_id] = keep_id
            plo, phi, pd_ = _merged_pairs(st, relabel[ta], relabel[tb], d[touched], w)
            if len(cl_a):
                tc = moved[cl_a] | moved[cl_b]
                if tc.any():  # only cannot-links of merged clusters change
                    ra, rb = relabel[cl_a[tc]].astype(np.int64), relabel[cl_b[tc]].astype(np.int64)
                    moved_codes = np.sort(np.minimum(ra, rb) * n + np.maximum(ra, rb))
                    # two sorted runs: the stable sort merges them in linear time
                    codes = _sorted_unique(np.concatenate([st.cl_codes[~tc], moved_codes]), kind="stable")
                    st.cl_codes, cl_a, cl_b = codes, codes // n, codes % n
                if len(pd_):
                    tcodes = plo * n + phi
                    pos = np.minimum(np.searchsorted(st.cl_codes, tcodes), len(st.cl_codes) - 1)
                    free = st.cl_codes[pos] != tcodes
                    plo, phi, pd_ = plo[free], phi[free], pd_[free]
            under = pd_ < threshold
            rest = ~touched
            ea = np.concatenate([ea[rest], plo[under].astype(ix)])
            eb = np.concatenate([eb[rest], phi[under].astype(ix)])
            d = np.concatenate([d[rest], pd_[under]])
    finally:
        st.edges, st.dist = np.stack([ea, eb], 1).astype(np.int64), d


BIG_DEGREE = 48  # candidates: a cluster with more is "big" (see _heap_merge); speed only, not results
LAZY_BUDGET = 0.05  # a big cluster's stored candidate distances may drift this far before a full rescan; speed only
STORE_ABSORBS = 10  # a big cluster gets a store once its budget allows this many absorbs of a single face


class _Store:
    """A big cluster's candidates with their distances as of some earlier state of the cluster.

    ``ids`` sorted; ``at[i]`` is the cluster's accumulated drift bound when ``d[i]`` was exact:
    the distance now is within ``drift - at[i]`` of it. Changes since the arrays were last
    packed wait in ``pending`` (id -> (distance, drift then), or None: no longer a candidate).
    """

    __slots__ = ("at", "d", "ids", "ok", "pending")

    def __init__(self, ids: np.ndarray, d: np.ndarray, at: float) -> None:
        order = np.argsort(ids)
        self.ids, self.d = ids[order], d[order].astype(np.float64)
        self.at = np.full(len(ids), at)
        self.ok = np.ones(len(ids), bool)
        self.pending: dict[int, tuple[float, float] | None] = {}

    def pack(self) -> None:
        """Apply the pending changes; forget dead entries when they are half the arrays."""
        if self.pending:
            keys = np.fromiter(self.pending, np.int64, len(self.pending))
            vals = list(self.pending.values())
            live = np.fromiter((v is not None for v in vals), bool, len(vals))
            dv = np.array([v if v is not None else (np.inf, 0.0) for v in vals], np.float64).reshape(-1, 2)
            pos = np.minimum(np.searchsorted(self.ids, keys), max(len(self.ids) - 1, 0))
            found = (self.ids[pos] == keys) if len(self.ids) else np.zeros(len(keys), bool)
            p = pos[found]
            self.ok[p] = live[found]
            self.d[p], self.at[p] = dv[found, 0], dv[found, 1]
            add = ~found & live
            if add.any():  # merge the new ids into the sorted arrays (no re-sort)
                k = np.argsort(keys[add])
                nk, nd, na = keys[add][k], dv[add, 0][k], dv[add, 1][k]
                at_ = np.searchsorted(self.ids, nk)
                self.ids = np.insert(self.ids, at_, nk)
                self.d = np.insert(self.d, at_, nd)
                self.at = np.insert(self.at, at_, na)
                self.ok = np.insert(self.ok, at_, True)
            self.pending = {}
        if 2 * int(self.ok.sum()) < len(self.ok):
            keep = self.ok
            self.ids, self.d, self.at = self.ids[keep], self.d[keep], self.at[keep]
            self.ok = np.ones(len(self.ids), bool)


def _heap_merge(
    st: _GraphState, threshold: float, big_degree: int | None = None, lazy_budget: float | None = None
) -> int:
    """Sequential HAC on the candidate graph: always merge the globally closest pair.

    Each cluster keeps a pointer to its nearest candidate (one heap entry per cluster, lazily
    invalidated by version counters), so a merge recomputes only the distances of the merged
    cluster and of the clusters that pointed at it.

    The heap only has to hold, for every candidate pair, *one* entry whose key is at most the
    pair's distance: then the smallest valid entry is the globally closest pair. So a small
    cluster's pointer looks at its small candidates only, and a *big* cluster (more than
    ``big_degree`` candidates, once big always big) keeps the exact nearest of all its
    candidates: a pair with a big cluster is covered by the big one's pointer. A giant identity
    that absorbs its fragments one by one then costs one scan of its own candidates per merge;
    the fragments that sit next to it never need a rescan because it changed (with pointers to
    every candidate they did: 0.7 M rescans at 1e5 faces with two identities of 20 % each).
    An entry whose target changed makes its cluster rescan when it pops (if it still points
    there): its key is a lower bound of that cluster's other candidates.

    A big cluster does not recompute all its candidate distances at every merge either (that
    was quadratic for a giant that absorbs thousands of fragments: 10 M of 15 M distance
    evaluations at 1e5 faces with two identities of 20 %). It keeps them (``_Store``) with a
    drift bound: absorbing ``b`` moves every average-linkage distance of ``a`` by at most
    ``2|b| / (|a| + |b|)`` (Lance–Williams: the new distance is a weighted mean of the two
    old ones, all in [0, 2]). A rescan computes exactly only the candidates whose lower bound
    is at most the smallest upper bound (the true nearest is among them), and every big
    candidate (their pointers need the exact value); pairs whose lower bound reaches the
    threshold are dropped. When the bound passes ``lazy_budget`` the cluster rescans all; a
    store is only kept by a cluster with faces enough for ``STORE_ABSORBS`` absorbs of one face.
    Every change of a candidate refreshes its entry: the changed cluster's own refresh
    computes its distance to each big candidate exactly. Merges still take the globally
    closest pair by exact distance, so results do not depend on the budget (0 turns it off).
    Returns the number of cluster distances it computed.
    """
    import heapq

    big_degree = BIG_DEGREE if big_degree is None else big_degree
    lazy_budget = LAZY_BUDGET if lazy_budget is None else lazy_budget
    n = st.n
    sums, cnt, parent = st.sums, st.cnt, st.parent
    ok = st.dist < threshold
    edges, dist = st.edges[ok], st.dist[ok]
    alive = parent == np.arange(n)
    adj: list[set[int] | None] = [set() if alive[i] else None for i in range(n)]
    for a, b in edges.tolist():
        adj[a].add(b)
        adj[b].add(a)
    cl_sets: dict[int, set[int]] = {}
    for code in st.cl_codes.tolist():
        a, b = divmod(code, n)
        cl_sets.setdefault(a, set()).add(b)
        cl_sets.setdefault(b, set()).add(a)
    big = np.zeros(n, bool)
    bd = np.full(n, np.inf)
    bj = np.full(n, -1, np.int64)
    if len(edges):
        node = np.concatenate([edges[:, 0], edges[:, 1]])
        nbr = np.concatenate([edges[:, 1], edges[:, 0]])
        dd = np.concatenate([dist, dist])
        big = np.bincount(node, minlength=n) > big_degree
        keep = big[node] | ~big[nbr]  # a small cluster points at small candidates only
        node, nbr, dd = node[keep], nbr[keep], dd[keep]
        order = np.lexsort((nbr, dd, node))
        node, nbr, dd = node[order], nbr[order], dd[order]
        first = np.r_[True, node[1:] != node[:-1]]
        bd[node[first]], bj[node[first]] = dd[first], nbr[first]
    version = np.zeros(n, np.int64)
    heap = [(float(bd[i]), int(i), int(bj[i]), 0, 0) for i in np.flatnonzero(bj >= 0)]
    heapq.heapify(heap)
    empty = np.zeros(0, np.int64)

    evaluated = [0]

    def dists(a: int, nbrs: np.ndarray) -> np.ndarray:
        evaluated[0] += len(nbrs)
        return 1.0 - (sums[nbrs] @ sums[a]) / (cnt[nbrs] * cnt[a])

    stores: dict[int, _Store] = {}
    stored = np.zeros(n, bool)  # has a store (the keys of stores)
    drift = np.zeros(n)  # a big cluster's drift bound since its store was built

    def unlink(x: int, y: int) -> None:
        adj[x].discard(y)
        adj[y].discard(x)
        if x in stores:
            stores[x].pending[y] = None
        if y in stores:
            stores[y].pending[x] = None

    def tell_big(x: int, ids: np.ndarray, d: np.ndarray) -> None:
        """x changed: its exact distances go into the stores of its big candidates."""
        sel = np.flatnonzero(stored[ids])
        for y, dy in zip(ids[sel].tolist(), d[sel].tolist(), strict=True):
            stores[y].pending[x] = (dy, float(drift[y]))

    def point(x: int, pid: np.ndarray, pd_: np.ndarray) -> None:
        token[x] += 1
        if not len(pid):
            bd[x], bj[x] = np.inf, -1
            return
        i = np.lexsort((pid, pd_))[0]
        bd[x], bj[x] = pd_[i], pid[i]
        heapq.heappush(heap, (float(pd_[i]), x, int(pid[i]), int(version[x]), int(version[pid[i]])))

    def refresh(x: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Recompute x's nearest candidate, drop far pairs; returns (ids, exact dists, dropped ids).

        The ids returned are every candidate, or for a big cluster served from its store the
        ones computed exactly (every big candidate among them).
        """
        if x in stores:
            return refresh_stored(x)
        nb = adj[x]
        ids = np.fromiter(nb, np.int64, len(nb)) if nb else empty
        d = dists(x, ids) if len(ids) else np.zeros(0)
        far = d >= threshold
        dropped = ids[far]
        if len(dropped):
            for y in dropped.tolist():
                unlink(x, y)
            ids, d = ids[~far], d[~far]
        if len(ids) > big_degree:
            big[x] = True
        if big[x] and cnt[x] * lazy_budget >= STORE_ABSORBS * 2:  # room for that many absorbs of one face
            drift[x] = 0.0
            stores[x] = _Store(ids, d, 0.0)
            stored[x] = True
        tell_big(x, ids, d)
        mine = slice(None) if big[x] else ~big[ids]
        point(x, ids[mine], d[mine])
        return ids, d, dropped

    def refresh_stored(x: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = stores[x]
        c.pack()
        ids = c.ids
        ok = c.ok & (parent[ids] == ids)
        slack = drift[x] - c.at
        lb = c.d - slack
        far = ok & (lb >= threshold)
        ok &= ~far
        dropped = [ids[far]]
        if ok.any():
            best = (c.d + slack)[ok].min()
            ii = np.flatnonzero(ok & ((lb <= best) | big[ids]))
            de = dists(x, ids[ii])
            c.d[ii], c.at[ii] = de, drift[x]
            far2 = de >= threshold
            dropped.append(ids[ii[far2]])
            ok[ii[far2]] = False
            ii, de = ii[~far2], de[~far2]
        else:
            ii, de = empty, np.zeros(0)
        gone = np.concatenate(dropped)
        c.ok = ok
        for y in gone.tolist():
            if adj[y] is not None:
                unlink(x, y)
        ex = ids[ii]
        tell_big(x, ex, de)
        point(x, ex, de)
        return ex, de, gone

    token = np.zeros(n, np.int64)
    while heap:
        _, a, b, va, vb = heapq.heappop(heap)
        if b < 0:  # a rescan token: a's nearest is unknown but no closer than this key
            if adj[a] is not None and version[a] == va and token[a] == vb:
                refresh(a)
            continue
        if adj[a] is None or version[a] != va:
            continue  # stale entry (a changed: it has a newer one)
        if adj[b] is None or version[b] != vb:
            if bj[a] == b:  # a still points at a cluster that changed or is gone: rescan a
                refresh(a)
            continue
        if len(adj[a]) < len(adj[b]):  # the cluster with more neighbours survives
            a, b = b, a
        sa, sb = adj[a], adj[b]
        from_b = np.fromiter(sb, np.int64, len(sb))
        stores.pop(b, None)
        stored[b] = False
        if a in stores:  # keep a's store if the merge moves its distances little enough
            step = 2.0 * cnt[b] / (cnt[a] + cnt[b])
            if drift[a] + step > lazy_budget:
                del stores[a]
                stored[a] = False
            else:
                drift[a] += step
                for y in sb - sa:  # a's new candidates: no bound yet, so computed exactly at the refresh below
                    if y != a:
                        stores[a].pending[y] = (0.0, -np.inf)
        sa |= sb
        sa.discard(a)
        sa.discard(b)
        for x in sb:
            if x != a:
                nx = adj[x]
                nx.discard(b)
                nx.add(a)
        adj[b] = None
        ca, cb = cl_sets.pop(a, set()), cl_sets.pop(b, set())
        for x in cb:
            cl_sets[x].discard(b)
            cl_sets[x].add(a)
        removed = []
        if ca or cb:
            # pairs already cannot-linked to a were removed before: only the new conflicts
            new_conflicts = (sa & cb) if len(cb) < len(sa) else (cb & sa)
            new_conflicts |= {x for x in from_b.tolist() if x in ca}
            for x in new_conflicts:  # would join two faces of one photo: never a candidate again
                if x in sa:
                    unlink(a, x)
                    removed.append(x)
            ca |= cb
            cl_sets[a] = ca
        sums[a] += sums[b]
        cnt[a] += cnt[b]
        parent[b] = a
        big[a] |= big[b]
        version[a] += 1
        version[b] += 1
        bd[b], bj[b] = np.inf, -1
        ids, dn, dropped = refresh(a)  # distances to every remaining candidate of the new cluster
        # clusters no longer adjacent whose nearest was a or b: recompute them (b's neighbours
        # are all a's now unless refresh(a) dropped them or a cannot-link removed them)
        gone = np.concatenate([dropped, np.asarray(removed, np.int64)])
        gone = gone[(gone != a) & (gone != b)]
        for x in np.unique(gone[(bj[gone] == a) | (bj[gone] == b) | (bj[gone] == -2)]).tolist():
            if adj[x] is not None and x not in sa:
                refresh(x)
        if not len(ids):
            continue
        # Neighbours whose pointer may involve the new cluster: all of them if it is small, only
        # the big ones if it is big (small clusters do not point at big ones).
        if big[a]:
            sel = big[ids]
            ids, dn = ids[sel], dn[sel]
            if not len(ids):
                continue
        stale = (bj[ids] == a) | (bj[ids] == b) | (bj[ids] == -2)
        # Clusters that pointed at a or b (or await a rescan): bd is a lower bound of their
        # distance to every other candidate, so if the merged cluster is no farther it is their
        # nearest now. Otherwise the rescan is deferred: a token keyed by that lower bound pops
        # before any pair it could change, and is dropped if the cluster changes first.
        still = stale & (dn <= bd[ids])
        for x, dx in zip(ids[still].tolist(), dn[still].tolist(), strict=True):
            bd[x], bj[x] = dx, a
            token[x] += 1
            heapq.heappush(heap, (dx, x, a, int(version[x]), int(version[a])))
        for x in ids[stale & ~still].tolist():
            if bj[x] != -2:
                bj[x] = -2
                token[x] += 1
                heapq.heappush(heap, (float(bd[x]), x, -1, int(version[x]), int(token[x])))
        closer = ~stale & (dn < bd[ids])
        for x, dx in zip(ids[closer].tolist(), dn[closer].tolist(), strict=True):
            bd[x], bj[x] = dx, a
            heapq.heappush(heap, (dx, x, a, int(version[x]), int(version[a])))
    return evaluated[0]


def _roots(parent: np.ndarray) -> np.ndarray:
    root = parent.copy()
    while True:
        nxt = root[root]
        if np.array_equal(nxt, root):
            return root
        root = nxt


def _cluster_level_candidates(
    st: _GraphState, threshold: float, cl: np.ndarray, k: int, exact_max: int = REPAIR_EXACT_MAX
) -> tuple[int, bool]:
    """Replace the candidates by the cluster pairs under the threshold, found among clusters.

    The average-linkage distance of two clusters is ``1 - m_A·m_B`` with ``m`` the mean
    (unnormalised) embedding of each, so the pairs under the threshold are the pairs of means
    whose inner product is above ``1 - threshold``. Up to ``exact_max`` clusters they are all
    found by the exact blocked search (``epsilon_graph`` on the means; complete; O(C²) products,
    about a minute for 165k clusters on 2 cores). Above, each cluster's ``k`` nearest clusters
    by inner product (faiss IVF) are taken: approximate, so the caller repeats the search.
    This finds the pairs a face-level kNN graph missed (two parts of one identity whose faces
    are never among each other's k nearest). Pairs that are cannot-linked (a photo in both)
    are left out. Returns (number of candidate pairs, all under the threshold; whether the
    search was complete).
    """
    n = st.n
    root = _roots(st.parent)
    st.parent = root
    alive = np.flatnonzero(root == np.arange(n))
    st.edges, st.dist = np.zeros((0, 2), np.int64), np.zeros(0)
    if len(alive) < 2:
        return 0, True
    means = (st.sums[alive] / st.cnt[alive, None]).astype(np.float32)
    local = epsilon_graph(means, threshold) if len(alive) <= exact_max else None
    complete = local is not None
    if local is None:
        local = knn_graph(means, min(k, len(alive) - 1))
    edges = _unique_pairs(alive[local], n)
    dist = _edge_dist(st.sums, st.cnt, edges)
    edges, dist = edges[dist < threshold], dist[dist < threshold]
    st.cl_codes = np.zeros(0, np.int64)
    if len(cl):
        a, b = root[cl[:, 0]], root[cl[:, 1]]
        st.cl_codes = _sorted_unique(np.minimum(a, b) * n + np.maximum(a, b))
        ok = ~np.isin(edges[:, 0] * n + edges[:, 1], st.cl_codes)
        edges, dist = edges[ok], dist[ok]
    st.edges, st.dist = edges, dist
    return len(edges), complete


def graph_average_linkage(
    emb: np.ndarray,
    groups: np.ndarray,
    threshold: float,
    edges: np.ndarray | None = None,
    k: int = 32,
    repair: bool | None = None,
    repair_k: int = 16,
    max_repairs: int = 8,
    repair_exact_max: int = REPAIR_EXACT_MAX,
) -> np.ndarray:
    """Average-linkage HAC restricted to a candidate graph (default: kNN), no n×n matrix.

    Distances between clusters are exact (from sums). Pairs at or above the threshold are
    dropped: for average linkage such a pair (A, K) can only fall under the threshold again
    when A merges with some B that is under it with K, and then (A∪B, K) is re-created from
    (B, K) with its exact distance. So on the complete graph this is exactly average-linkage
    HAC (tested against SciPy); on a kNN graph only the candidate set is approximate.
    Vectorised reciprocal-nearest-neighbour rounds do the bulk of the merges, then a heap
    finishes sequentially.

    ``repair`` (default: on for the kNN graph, off when ``edges`` are given): when the graph
    is exhausted, the cluster pairs still under the threshold are looked up among the
    clusters themselves (``_cluster_level_candidates``) and HAC goes on over them, until a
    search finds none (at most ``max_repairs`` times). The kNN graph misses face pairs, so
    without this two parts of one identity can stay apart although their average distance is
    under the threshold; with it, as in exact HAC, no two final clusters are under the
    threshold. While the cluster search is complete (up to ``repair_exact_max`` clusters) one
    pass is enough: HAC over every cluster pair under the threshold is exact HAC from there
    on (same argument as above), so the only approximation left is the order of the merges
    made on the kNN graph. Above, each cluster's ``repair_k`` nearest clusters are searched.
    """
    n = len(emb)
    if n <= 1:
        return np.zeros(n, np.int64)
    if repair is None:
        repair = edges is None
    edges = knn_graph(emb, k) if edges is None else _unique_pairs(np.asarray(edges, np.int64), n)
    sums = np.asarray(emb, np.float64).copy()
    cl = cannot_link_pairs(groups)
    cl_codes = _sorted_unique(cl[:, 0] * n + cl[:, 1]) if len(cl) else np.zeros(0, np.int64)
    if len(cl_codes):
        edges = edges[~np.isin(edges[:, 0] * n + edges[:, 1], cl_codes)]
    st = _GraphState(sums, np.ones(n, np.float64), np.arange(n), edges, _edge_dist(sums, np.ones(n), edges), cl_codes)
    # above LONG_ROUNDS_FROM faces the heap's cost per merge (a giant's many candidates) outgrows a
    # round's cost per merge: the rounds go on to a lower merge rate (docs/benchmarks.md, session 6)
    min_fraction = ROUND_MIN_FRACTION if n <= LONG_ROUNDS_FROM else ROUND_MIN_FRACTION_LARGE
    _rnn_rounds(st, threshold, min_fraction=min_fraction)
    _heap_merge(st, threshold)
    for _ in range(max_repairs if repair else 0):
        found, complete = _cluster_level_candidates(st, threshold, cl, repair_k, repair_exact_max)
        log.debug("cluster: repair pass, %d cluster pairs under %.3f", found, threshold)
        if not found:
            break
        _rnn_rounds(st, threshold, min_fraction=min_fraction)
        _heap_merge(st, threshold)
        if complete:
            break
    return _roots(st.parent)


# --------------------------------------------------------------------------- public API


@dataclass(frozen=True)
class ClusterResult:
    labels: np.ndarray  # per input row, 0.. numbered by size desc then smallest key
    method: str

    @property
    def n_clusters(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0


def auto_max_pairs(n: int) -> int:
    """The most pairs under the threshold with which ``auto`` still takes the exact path for n faces."""
    return max(AUTO_PAIRS_FLOOR, AUTO_PAIRS_PER_FACE * n)


AUTO_SAMPLE = 2000  # faces sampled to estimate the exact graph's size


def estimated_pairs(x: np.ndarray, threshold: float, sample: int = AUTO_SAMPLE) -> int:
    """The number of pairs under ``threshold`` among the rows of ``x``, estimated from a fixed
    sample (exact up to ``sample`` rows; deterministic)."""
    n = len(x)
    if n <= sample:
        return int((np.triu(x @ x.T, 1) > 1.0 - threshold).sum())
    idx = np.sort(np.random.default_rng(0).choice(n, size=sample, replace=False))
    s = x[idx]
    found = int((np.triu(s @ s.T, 1) > 1.0 - threshold).sum())
    return int(found * (n * (n - 1)) / (sample * (sample - 1)))


def cluster_faces(
    keys: Sequence[str],
    emb: np.ndarray,
    groups: Sequence,
    threshold: float,
    method: str = "auto",
    exact_max: int = EXACT_MAX,
    k: int = 32,
    repair: bool = True,
) -> ClusterResult:
    """Average-linkage clusters of faces, cannot-link within a photo; row order does not matter.

    ``method``: auto (exact up to ``exact_max`` faces while the exact graph holds at most
    ``auto_max_pairs(n)`` pairs, else graph), exact, graph (kNN graph
    with ``k`` neighbours per face, then the cluster-level repair unless ``repair`` is False;
    see ``graph_average_linkage``) or dense (SciPy reference, O(n²)).
    """
    keys = np.asarray(keys, dtype=object).astype(str)
    n = len(keys)
    if n == 0:
        return ClusterResult(np.zeros(0, np.int64), "empty")
    order = np.argsort(keys, kind="stable")
    x = normalize(np.asarray(emb)[order])
    g = group_ids(np.asarray(groups, dtype=object)[order])
    edges = None
    if method == "auto" and n <= exact_max:
        # giant identities make the exact graph dense: a sample tells the clear cases, the
        # pair guard the rest
        guess = estimated_pairs(x, threshold)
        if guess <= 2 * auto_max_pairs(n):
            edges = epsilon_graph(x, threshold, max_pairs=auto_max_pairs(n))
        method = "exact" if edges is not None else "graph"
        if edges is None:
            log.info("cluster: ~%d pairs under %.2f (giant identities): the kNN graph path", guess, threshold)
    elif method == "auto":
        method = "graph"
    elif method == "exact":
        edges = epsilon_graph(x, threshold)
        if edges is None:
            log.warning("cluster: too many pairs under %.2f for the exact path; using the kNN graph", threshold)
            method = "graph"
    if method == "exact":
        lab = graph_average_linkage(x, g, threshold, edges=edges)
    elif method == "graph":
        lab = graph_average_linkage(x, g, threshold, k=k, repair=repair)
    elif method == "dense":
        lab = dense_average_linkage(x, g, threshold)
    else:
        raise ValueError(f"unknown method {method!r} (auto, exact, graph, dense)")
    lab = canonical_labels(lab, keys[order])
    out = np.empty(n, np.int64)
    out[order] = lab
    return ClusterResult(out, method)


def centroids(emb: np.ndarray, labels: np.ndarray, n_clusters: int | None = None) -> np.ndarray:
    """Re-normalised mean embedding per cluster (rows of labels < 0 are ignored)."""
    labels = np.asarray(labels)
    k = int(labels.max()) + 1 if n_clusters is None else n_clusters
    sums = np.zeros((k, emb.shape[1]), np.float64)
    ok = labels >= 0
    np.add.at(sums, labels[ok], np.asarray(emb, np.float64)[ok])
    return normalize(sums)


def reject_outliers(
    emb: np.ndarray, labels: np.ndarray, thresholds: Sequence[float] = (0.55,), min_size: int = 4
) -> np.ndarray:
    """Drop faces (label -> -1) farther than the threshold from their cluster's centroid.

    Applied to clusters of at least ``min_size`` faces; each pass recomputes the centroids from
    the faces kept so far (two passes, 0.55 then 0.45, let a bystander-heavy folder converge).
    """
    labels = np.asarray(labels).copy()
    x = normalize(emb)
    for t in thresholds:
        ok = labels >= 0
        if not ok.any():
            break
        k = int(labels.max()) + 1
        sizes = np.bincount(labels[ok], minlength=k)
        cents = centroids(x, labels, k)
        d = 1.0 - np.einsum("ij,ij->i", x[ok], cents[labels[ok]])
        big = sizes[labels[ok]] >= min_size
        drop = np.flatnonzero(ok)[big & (d > t)]
        labels[drop] = -1
    return labels


def centroid_merge(emb: np.ndarray, labels: np.ndarray, groups: Sequence, threshold: float = 0.40) -> np.ndarray:
    """Merge clusters whose re-normalised centroids are closer than ``threshold``.

    Closest pair first, centroids recomputed after each merge; never merges two clusters that
    hold faces of the same photo. Faces labelled -1 are left alone.
    """
    labels = np.asarray(labels).copy()
    ok = labels >= 0
    if not ok.any():
        return labels
    x = normalize(emb)
    g = group_ids(groups)
    ids = np.unique(labels[ok])
    sums = {int(c): np.asarray(x[labels == c], np.float64).sum(0) for c in ids}
    photos = {int(c): set(g[labels == c].tolist()) for c in ids}
    while len(sums) > 1:
        cs = sorted(sums)
        m = normalize(np.stack([sums[c] for c in cs]))
        d = 1.0 - m @ m.T
        np.fill_diagonal(d, np.inf)
        for i, ci in enumerate(cs):  # forbid cannot-link merges
            for j in range(i + 1, len(cs)):
                if photos[ci] & photos[cs[j]]:
                    d[i, j] = d[j, i] = np.inf
        i, j = np.unravel_index(np.argmin(d), d.shape)
        if d[i, j] >= threshold:
            break
        a, b = cs[min(i, j)], cs[max(i, j)]
        sums[a] += sums.pop(b)
        photos[a] |= photos.pop(b)
        labels[labels == b] = a
    return labels


@dataclass(frozen=True)
class Match:
    identity: np.ndarray  # per face: index of the matched identity, or -1
    distance: np.ndarray  # per face: distance to it (inf when unmatched)


def nearest_identity(
    emb: np.ndarray,
    groups: Sequence,
    prototypes: np.ndarray,
    proto_identity: np.ndarray,
    threshold: float,
    taken: set[tuple[str, int]] | None = None,
) -> Match:
    """Route faces to the nearest identity within ``threshold``.

    ``prototypes`` are normalised vectors (one centroid, or several per identity);
    ``proto_identity`` maps each to its identity. Cannot-link: faces of one photo go to
    different identities (closest pairs win), and a photo already represented in an identity
    (``taken``: (photo id, identity)) sends no other face there.
    """
    x = normalize(emb)
    p = normalize(prototypes)
    proto_identity = np.asarray(proto_identity)
    n = len(x)
    ident = np.full(n, -1, np.int64)
    dist = np.full(n, np.inf)
    if n == 0 or len(p) == 0:
        return Match(ident, dist)
    n_ids = int(proto_identity.max()) + 1
    d_proto = 1.0 - x @ p.T
    d_id = np.full((n, n_ids), np.inf)
    for j in range(n_ids):  # distance to an identity = to its closest prototype
        cols = proto_identity == j
        if cols.any():
            d_id[:, j] = d_proto[:, cols].min(1)
    g = np.asarray(groups, dtype=object).astype(str)
    blocked: dict[str, list[int]] = {}
    for photo, j in taken or ():
        if 0 <= j < n_ids:
            blocked.setdefault(photo, []).append(j)
    order = np.argsort(g, kind="stable")  # rows grouped by photo in one pass (no per-photo scan)
    gs = g[order]
    starts = np.flatnonzero(np.r_[True, gs[1:] != gs[:-1]])
    for s, e in zip(starts, np.r_[starts[1:], n], strict=True):
        rows = order[s:e]
        sub = d_id[rows].copy()
        if gs[s] in blocked:
            sub[:, blocked[gs[s]]] = np.inf
        while True:
            r, c = np.unravel_index(np.argmin(sub), sub.shape)
            if not np.isfinite(sub[r, c]) or sub[r, c] >= threshold:
                break
            ident[rows[r]], dist[rows[r]] = c, sub[r, c]
            sub[r, :] = np.inf
            sub[:, c] = np.inf
    return Match(ident, dist)


@dataclass(frozen=True)
class Assignment:
    identity: np.ndarray  # per face: an existing identity, or a new one numbered past them
    matched: np.ndarray  # per face: True when it joined an existing identity
    n_new: int


def assign_or_cluster(
    keys: Sequence[str],
    emb: np.ndarray,
    groups: Sequence,
    prototypes: np.ndarray,
    proto_identity: np.ndarray,
    match_threshold: float,
    cluster_threshold: float,
    taken: set[tuple[str, int]] | None = None,
) -> Assignment:
    """Route faces to existing identities (``nearest_identity``), cluster the unmatched rest.

    New clusters get identity numbers past the existing ones (largest new cluster first);
    cannot-link holds across both steps: a face never joins an identity (old or new) that
    already has a face of its photo.
    """
    keys = np.asarray(keys, dtype=object).astype(str)
    groups = np.asarray(groups, dtype=object).astype(str)
    n_old = int(np.max(proto_identity)) + 1 if len(proto_identity) else 0
    m = nearest_identity(emb, groups, prototypes, proto_identity, match_threshold, taken)
    ident = m.identity.copy()
    rest = np.flatnonzero(ident < 0)
    n_new = 0
    if len(rest):
        res = cluster_faces(keys[rest], np.asarray(emb)[rest], groups[rest], cluster_threshold)
        ident[rest] = n_old + res.labels
        n_new = res.n_clusters
    return Assignment(ident, m.identity >= 0, n_new)
