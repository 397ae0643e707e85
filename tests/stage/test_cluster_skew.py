"""The cluster engine on skewed libraries (issue #18): giant identities, exactness unchanged."""

import numpy as np
import pytest

from facesets import clustering as C
from facesets.metrics import bcubed_prf
from facesets.synth import identity_sizes, synthetic_faces


def test_skews_shape_the_identity_sizes():
    rng = np.random.default_rng(0)
    for seed in range(20):
        fam = identity_sizes(np.random.default_rng(seed), 100_000, "family", 1.2, 2_000)
        assert fam.sum() == 100_000
        giants = fam[fam >= 8_000]
        assert 2 <= len(giants) <= 5 and fam[len(giants)] <= 2_000, fam[:6]
        assert giants.max() <= 25_000 and giants.sum() <= 80_000
    uni = identity_sizes(rng, 50_000, "uniform", 1.2, 1_000)
    assert uni.sum() == 50_000 and uni.max() <= 40 and uni.min() >= 1
    two = identity_sizes(rng, 10_000, "zipf", 1.2, 200, giants=(0.2, 0.2))
    assert two.sum() == 10_000 and two[:2].tolist() == [2_000, 2_000] and two[2] <= 200
    with pytest.raises(ValueError, match="skew"):
        identity_sizes(rng, 10, "pareto", 1.2, 5)


def test_default_generator_is_unchanged_by_the_skew_knob():
    a = synthetic_faces(3000, seed=4)
    b = synthetic_faces(3000, seed=4, skew="zipf")
    assert np.array_equal(a.emb, b.emb) and np.array_equal(a.photo, b.photo)


@pytest.mark.parametrize("big_degree", [0, 3, C.BIG_DEGREE, 10**9])  # all big ... none big
def test_exact_path_with_giant_identities_equals_dense_hac(big_degree, monkeypatch):
    """Two identities of 20 % each and a family library: the exact path (rounds + heap with
    big-cluster pointers) equals SciPy's dense average linkage with cannot-link, whatever
    the big/small split of the heap phase."""
    monkeypatch.setattr(C, "BIG_DEGREE", big_degree)
    for kw in ({"giants": (0.2, 0.2)}, {"skew": "family"}):
        s = synthetic_faces(2500, seed=9, **kw)
        exact = C.cluster_faces(s.keys, s.emb, s.photo, 0.55, method="exact")
        dense = C.cluster_faces(s.keys, s.emb, s.photo, 0.55, method="dense")
        assert np.array_equal(exact.labels, dense.labels), kw
        assert np.bincount(exact.labels).max() > 300  # a giant cluster formed


def test_heap_phase_alone_on_the_complete_graph_is_exact_with_giants(monkeypatch):
    """No reciprocal-nearest rounds at all (the heap does every merge): still textbook HAC."""
    monkeypatch.setattr(C, "_rnn_rounds", lambda st, threshold, **kw: None)
    s = synthetic_faces(1200, seed=2, giants=(0.25, 0.15))
    x, g = C.normalize(s.emb), C.group_ids(s.photo)
    full = np.array(np.triu_indices(len(x), 1)).T
    got = C.graph_average_linkage(x, g, 0.55, edges=full)
    ref = C.dense_average_linkage(x, g, 0.55)
    assert np.array_equal(C.canonical_labels(got, s.keys), C.canonical_labels(ref, s.keys))


def _complete_state(x: np.ndarray, g: np.ndarray) -> C._GraphState:
    n = len(x)
    full = np.array(np.triu_indices(n, 1)).T
    cl = C.cannot_link_pairs(g)
    codes = C._sorted_unique(cl[:, 0] * n + cl[:, 1])
    full = full[~np.isin(full[:, 0] * n + full[:, 1], codes)]
    sums = x.astype(np.float64).copy()
    return C._GraphState(sums, np.ones(n), np.arange(n), full, C._edge_dist(sums, np.ones(n), full), codes)


def test_big_clusters_stored_distances_do_not_change_the_result():
    """A big cluster's candidate store with its drift bound (off, the default, a budget so
    large that every merge keeps the store; all clusters big or the default split) gives
    exactly SciPy's HAC on the complete graph, heap phase alone (it does every merge)."""
    s = synthetic_faces(900, seed=5, giants=(0.3, 0.1))
    x, g = C.normalize(s.emb), C.group_ids(s.photo)
    ref = C.canonical_labels(C.dense_average_linkage(x, g, 0.55), s.keys)
    assert np.bincount(ref).max() > 150
    for budget in (0.0, C.LAZY_BUDGET, 2.0):
        for big_degree in (0, C.BIG_DEGREE):
            st = _complete_state(x, g)
            C._heap_merge(st, 0.55, big_degree=big_degree, lazy_budget=budget)
            assert np.array_equal(C.canonical_labels(C._roots(st.parent), s.keys), ref), (budget, big_degree)


def test_stored_distances_save_work_on_a_giant():
    """The point of the store: a giant absorbing its fragments no longer recomputes every
    candidate distance at every merge (distance evaluations counted, not timed), on the kNN
    graph after the rounds, as the graph path runs it; the same partition either way."""
    s = synthetic_faces(20_000, seed=3, giants=(0.2, 0.2))
    x = C.normalize(s.emb)
    edges = C._unique_pairs(C.knn_graph(x, 32), len(x))
    got = {}
    for budget in (0.0, C.LAZY_BUDGET):
        sums = x.astype(np.float64).copy()
        ones = np.ones(len(x))
        st = C._GraphState(sums, ones, np.arange(len(x)), edges, C._edge_dist(sums, ones, edges), np.zeros(0, np.int64))
        C._rnn_rounds(st, 0.55)
        evaluated = C._heap_merge(st, 0.55, lazy_budget=budget)
        got[budget] = (evaluated, C.canonical_labels(C._roots(st.parent), s.keys))
    assert np.array_equal(got[0.0][1], got[C.LAZY_BUDGET][1])
    assert got[C.LAZY_BUDGET][0] < 0.6 * got[0.0][0], {b: v[0] for b, v in got.items()}


def _pairs_under(x: np.ndarray, t: float) -> int:
    return int((np.triu(x @ x.T, 1) > 1.0 - t).sum())


def test_auto_leaves_the_exact_path_when_giants_make_its_graph_dense(monkeypatch):
    """With two identities holding 20 % each, the exact graph holds ~size^2 pairs: auto takes the
    kNN graph + repair there (same quality), and stays exact on a library without giants."""
    from facesets.metrics import bcubed_prf

    monkeypatch.setattr(C, "AUTO_PAIRS_FLOOR", 0)  # the default floor keeps libraries this small exact
    giants = synthetic_faces(4000, seed=11, giants=(0.2, 0.2))
    uniform = synthetic_faces(4000, seed=11, skew="uniform")
    t = 0.55
    dense_pairs = _pairs_under(C.normalize(giants.emb), t)
    sparse_pairs = _pairs_under(C.normalize(uniform.emb), t)
    assert dense_pairs > C.auto_max_pairs(len(giants)) > sparse_pairs  # the fixture is what it says
    auto = C.cluster_faces(giants.keys, giants.emb, giants.photo, t)
    assert auto.method == "graph"
    exact = C.cluster_faces(giants.keys, giants.emb, giants.photo, t, method="exact")
    assert bcubed_prf(exact.labels, auto.labels)[2] > 0.99
    truth = bcubed_prf(giants.identity, auto.labels)[2]
    assert truth >= bcubed_prf(giants.identity, exact.labels)[2] - 0.01
    assert C.cluster_faces(uniform.keys, uniform.emb, uniform.photo, t).method == "exact"
    monkeypatch.setattr(C, "AUTO_PAIRS_FLOOR", 10**9)
    assert C.cluster_faces(giants.keys, giants.emb, giants.photo, t).method == "exact"


def _giant_complete_state(n: int = 1500, seed: int = 5) -> tuple[C._GraphState, np.ndarray]:
    s = synthetic_faces(n, seed=seed, giants=(0.25,))
    x = C.normalize(s.emb)
    edges = C.epsilon_graph(x, 0.55)
    sums = x.astype(np.float64).copy()
    ones = np.ones(len(x))
    g = C.group_ids(s.photo)
    cl = C.cannot_link_pairs(g)
    codes = C._sorted_unique(cl[:, 0] * n + cl[:, 1])
    edges = edges[~np.isin(edges[:, 0] * n + edges[:, 1], codes)]
    return C._GraphState(sums, ones, np.arange(n), edges, C._edge_dist(sums, ones, edges), codes), g


def test_merged_pairs_weighted_means_equal_the_exact_distances():
    """A round's new pairs: where the old pairs cover a new one its distance is their
    Lance–Williams mean, else it is computed; both must equal the distance from the sums."""
    st, _ = _giant_complete_state()
    n = st.n
    rng = np.random.default_rng(0)
    keep = rng.choice(n, 200, replace=False)
    gone = rng.choice(np.setdiff1d(np.arange(n), keep), 200, replace=False)
    moved = np.zeros(n, bool)
    moved[keep] = moved[gone] = True
    touched = moved[st.edges[:, 0]] | moved[st.edges[:, 1]]
    et = st.edges[touched]
    w = st.cnt[et[:, 0]] * st.cnt[et[:, 1]]
    st.sums[keep] += st.sums[gone]
    st.cnt[keep] += st.cnt[gone]
    relabel = np.arange(n)
    relabel[gone] = keep
    lo, hi, d = C._merged_pairs(st, relabel[et[:, 0]], relabel[et[:, 1]], st.dist[touched], w)
    need = st.cnt[lo] * st.cnt[hi]
    assert (lo < hi).all() and len(np.unique(lo * n + hi)) == len(lo)
    exact = C._edge_dist(st.sums, st.cnt, np.stack([lo, hi], 1))
    np.testing.assert_allclose(d, exact, rtol=0, atol=1e-12)
    # both ways were taken: some new pairs covered by their old parts, some not
    a0, b0 = relabel[et[:, 0]], relabel[et[:, 1]]
    ok = a0 != b0
    code = np.minimum(a0, b0)[ok] * n + np.maximum(a0, b0)[ok]
    covered = np.zeros(len(lo))
    np.add.at(covered, np.searchsorted(lo * n + hi, code), w[ok])
    assert (covered == need).any() and (covered < need).any()


def test_rounds_leave_exact_distances_under_the_threshold_and_no_cannot_link():
    st, g = _giant_complete_state()
    C._rnn_rounds(st, 0.55)
    n = st.n
    root = C._roots(st.parent)
    alive = root == np.arange(n)
    assert alive.sum() < 0.5 * n  # the rounds did merge
    e = st.edges
    assert (e[:, 0] < e[:, 1]).all() and alive[e].all()
    assert len(np.unique(e[:, 0] * n + e[:, 1])) == len(e)
    np.testing.assert_allclose(st.dist, C._edge_dist(st.sums, st.cnt, e), rtol=0, atol=1e-12)
    assert (st.dist < 0.55).all()
    # no candidate pair joins two faces of one photo, and every cannot-link is between live clusters
    photos = [set(g[root == c].tolist()) for c in range(n)]
    assert not any(photos[a] & photos[b] for a, b in e.tolist())
    assert alive[st.cl_codes // n].all() and alive[st.cl_codes % n].all()


def test_large_libraries_run_the_rounds_longer_at_the_same_quality(monkeypatch):
    """Above LONG_ROUNDS_FROM faces the rounds stop at a lower merge rate (speed: the heap's cost
    per merge grows with the giants); a library just over the bound, made small here, gets the
    lower rate and about the same partition."""
    s = synthetic_faces(6000, seed=2, skew="family")
    x = C.normalize(s.emb)
    g = C.group_ids(s.photo)
    seen = []
    real = C._rnn_rounds

    def spy(st, threshold, **kw):
        seen.append(kw["min_fraction"])
        return real(st, threshold, **kw)

    monkeypatch.setattr(C, "_rnn_rounds", spy)
    base = C.graph_average_linkage(x, g, 0.55)
    assert set(seen) == {C.ROUND_MIN_FRACTION}
    seen.clear()
    monkeypatch.setattr(C, "LONG_ROUNDS_FROM", 5000)
    long = C.graph_average_linkage(x, g, 0.55)
    assert set(seen) == {C.ROUND_MIN_FRACTION_LARGE}
    f_base, f_long = bcubed_prf(s.identity, base)[2], bcubed_prf(s.identity, long)[2]
    assert abs(f_long - f_base) < 0.01, (f_base, f_long)
    photos = [set() for _ in range(len(x))]
    for lab, ph in zip(long.tolist(), g.tolist(), strict=True):
        assert ph not in photos[lab]  # cannot-link holds
        photos[lab].add(ph)
