"""Graph-context clustering (facesets/graph_cluster.py): determinism, hard cannot-link, a
constructed case where the neighbourhood context recovers what average linkage splits."""

from __future__ import annotations

import numpy as np
import pytest

from facesets import graph_cluster as gc
from facesets.clustering import cluster_faces, group_ids, normalize
from facesets.metrics import pairwise_prf
from facesets.synth import synthetic_faces


def _around(rng, centre, dist, n):
    """n unit vectors at cosine distance ``dist`` from ``centre``."""
    z = rng.standard_normal((n, len(centre)))
    z -= (z @ centre)[:, None] * centre
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    c = 1.0 - dist
    return c * centre + np.sqrt(1 - c * c) * z


def _violations(photo, labels) -> int:
    _, counts = np.unique(np.stack([group_ids(photo), labels], 1), axis=0, return_counts=True)
    return int((counts * (counts - 1) // 2).sum())


def test_deterministic_and_row_order_free():
    f = synthetic_faces(1500, seed=3)
    a = gc.cluster(f.keys, f.emb, f.photo, 0.55).labels
    b = gc.cluster(f.keys, f.emb, f.photo, 0.55).labels
    perm = np.random.default_rng(1).permutation(len(f))
    c = gc.cluster(f.keys[perm], f.emb[perm], f.photo[perm], 0.55).labels
    assert np.array_equal(a, b)
    back = np.empty_like(c)
    back[perm] = c
    assert np.array_equal(a, back)  # same labels, not just the same partition (canonical numbering)


@pytest.mark.parametrize("method", gc.METHODS)
def test_cannot_link_is_hard(method):
    # two people photographed together in every photo, embeddings nearly identical:
    # every photo's two faces must end in different clusters whatever the threshold
    rng = np.random.default_rng(0)
    centre = normalize(rng.standard_normal(64))
    emb = normalize(_around(rng, centre, 0.02, 40))
    photo = np.repeat(np.arange(20), 2)
    keys = np.array([f"f{i:03d}" for i in range(40)])
    for t in (0.3, 0.9, 1.5):
        lab = gc.cluster(keys, emb, photo, t, method=method).labels
        assert _violations(photo, lab) == 0
    # and on the synthetic library, where look-alikes share photos
    f = synthetic_faces(3000, seed=1)
    lab = gc.cluster(f.keys, f.emb, f.photo, 0.6, method=method).labels
    assert _violations(f.photo, lab) == 0


def test_attach_respects_cannot_link():
    # a singleton whose nearest cluster already holds a face of its photo stays alone
    rng = np.random.default_rng(2)
    centre = normalize(rng.standard_normal(32))
    emb = normalize(np.vstack([_around(rng, centre, 0.05, 4), _around(rng, centre, 0.3, 1)]))
    g = np.array([0, 1, 2, 3, 0])  # the far face is in photo 0, like cluster member 0
    labels = np.array([0, 0, 0, 0, 1])
    out = gc.attach_singletons(emb, g, labels, max_dist=0.5, ratio=0.9, k=5)
    assert out[4] == 1
    g2 = np.array([0, 1, 2, 3, 4])
    out2 = gc.attach_singletons(emb, g2, labels, max_dist=0.5, ratio=0.9, k=5)
    assert out2[4] == 0  # the same face from a photo of its own joins


def test_context_beats_hac_on_hard_views():
    # One person: 20 frontal faces tight around a centre, and 10 hard views (profile, age gap)
    # each 0.49 from the centre in directions of their own. The average distance from a hard
    # view to the frontal cluster is over the cut, so average linkage leaves every hard view
    # alone; each hard view's nearest neighbours are frontal faces of the same person, so the
    # kNN context pulls it in. Strangers (random directions, ~1.0 away) must stay apart.
    rng = np.random.default_rng(5)
    d = 128
    centre = normalize(rng.standard_normal(d))
    frontal = _around(rng, centre, 0.05, 20)
    hard = _around(rng, centre, 0.49, 10)
    strangers = normalize(rng.standard_normal((60, d)))
    emb = normalize(np.vstack([frontal, hard, strangers])).astype(np.float32)
    truth = np.r_[np.zeros(30, int), np.arange(1, 61)]
    photo = np.arange(len(emb))
    keys = np.array([f"k{i:04d}" for i in range(len(emb))])
    t = 0.5
    hac = cluster_faces(keys, emb, photo, t).labels
    ctx = gc.cluster(keys, emb, photo, t).labels
    p_h, r_h, _ = pairwise_prf(truth, hac)
    p_c, r_c, _ = pairwise_prf(truth, ctx)
    assert len(np.unique(hac[20:30])) == 10 and not np.isin(hac[20:30], hac[:20]).any()  # HAC splits them
    assert p_h == 1.0 and p_c == 1.0
    assert r_c > 1.25 * r_h, (r_h, r_c)


def test_hac_methods_pass_through_and_unknown_is_named():
    f = synthetic_faces(800, seed=4)
    a = gc.cluster(f.keys, f.emb, f.photo, 0.55, method="auto").labels
    b = cluster_faces(f.keys, f.emb, f.photo, 0.55).labels
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="unknown cluster method 'nope'"):
        gc.cluster(f.keys, f.emb, f.photo, 0.55, method="nope")


def test_empty_and_single():
    assert len(gc.cluster([], np.zeros((0, 8)), [], 0.5).labels) == 0
    assert gc.cluster(["a"], np.ones((1, 8)), ["p"], 0.5).labels.tolist() == [0]


def test_graph_path_above_exact_max():
    # above exact_max the HAC runs on the shared kNN graph (+ repair): still deterministic,
    # row-order free, cannot-link hard, and close to the exact path's quality
    f = synthetic_faces(2500, seed=6)
    a = gc.cluster(f.keys, f.emb, f.photo, 0.55, exact_max=500).labels
    perm = np.random.default_rng(2).permutation(len(f))
    c = gc.cluster(f.keys[perm], f.emb[perm], f.photo[perm], 0.55, exact_max=500).labels
    back = np.empty_like(c)
    back[perm] = c
    assert np.array_equal(a, back)
    assert _violations(f.photo, a) == 0
    exact = gc.cluster(f.keys, f.emb, f.photo, 0.55).labels
    assert pairwise_prf(exact, a)[2] > 0.98


def test_attach_two_lone_faces_of_one_photo_join_one_cluster_at_most():
    # two lone faces of ONE photo both near the same cluster: only one may join it
    rng = np.random.default_rng(5)
    centre = normalize(rng.standard_normal(32))
    emb = normalize(np.vstack([_around(rng, centre, 0.05, 4), _around(rng, centre, 0.3, 2)]))
    g = np.array([0, 1, 2, 3, 9, 9])
    labels = np.array([0, 0, 0, 0, 1, 2])
    out = gc.attach_singletons(emb, g, labels, max_dist=0.5, ratio=0.9, k=5)
    assert _violations(g, out) == 0
    assert (out[4:] == 0).sum() == 1  # one of them joins, the other stays alone


def test_reciprocal_neighbours():
    # rows: each face's neighbours, nearest first (itself first); 1 is 2's nearest, but 1's
    # own two nearest are itself and 0, so 1 is not a reciprocal neighbour of 2
    idx = np.array([[0, 1, 2], [1, 0, 2], [2, 1, 0]])
    r = gc.reciprocal(idx, 1)  # "the face is among the first 2 columns of the neighbour's row"
    assert r[0].tolist() == [True, True, False]  # 0 is in 1's first two, not in 2's
    assert r[1].tolist() == [True, True, True]  # 1 is in 0's and in 2's first two
    assert r[2].tolist() == [True, False, False]  # 2 is in neither 1's nor 0's first two


def test_centering_removes_the_shared_component_and_skips_small_sets():
    # many identities around one shared direction: centring removes it, so strangers move apart
    # (the noise gets relatively larger: one person's faces come a little apart too, less so)
    rng = np.random.default_rng(7)
    d = 64
    shared = normalize(rng.standard_normal(d))
    ids = normalize(rng.standard_normal((80, d)))
    x = normalize(np.repeat(normalize(0.8 * shared + 0.6 * ids), 3, 0) + 0.05 * rng.standard_normal((240, d)))
    keys = np.array([f"k{i:04d}" for i in range(len(x))])
    g = np.arange(len(x))
    y = gc.center_embeddings(keys, x, g, 1.0, 0.35, 50, 30_000)
    stranger = lambda v: float(np.mean([v[3 * a] @ v[3 * b] for a in range(10) for b in range(a + 1, 10)]))  # noqa: E731
    same = lambda v: float(np.mean([v[3 * a] @ v[3 * a + 1] for a in range(80)]))  # noqa: E731
    assert stranger(x) > 0.5 and stranger(y) < 0.2
    # one person's faces stay together, and further from strangers than before
    assert same(y) > 0.6 and same(y) - stranger(y) > same(x) - stranger(x) + 0.2
    # fewer tight clusters than center_min (10 people): the embeddings come back unchanged
    small = x[:30]
    assert np.array_equal(gc.center_embeddings(keys[:30], small, g[:30], 1.0, 0.35, 50, 30_000), small)
