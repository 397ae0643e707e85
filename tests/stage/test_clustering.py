"""The cluster engine: exactness against SciPy's HAC, cannot-link, determinism, the operations."""

import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist

from facesets import clustering as C
from facesets.synth import synthetic_faces


def _same_partition(a, b) -> bool:
    """Equal up to renaming of the clusters."""
    a, b = np.asarray(a), np.asarray(b)
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def _scipy_reference(emb, t):
    z = linkage(pdist(np.asarray(emb, np.float64), "cosine"), "average")
    return fcluster(z, np.nextafter(t, -np.inf), "distance")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_path_equals_textbook_hac_without_constraints(seed):
    s = synthetic_faces(1500, seed=seed)
    every_face_its_own_photo = np.arange(len(s))
    for t in (0.4, 0.55, 0.7):
        ours = C.cluster_faces(s.keys, s.emb, every_face_its_own_photo, t, method="exact")
        assert ours.method == "exact"
        assert _same_partition(ours.labels, _scipy_reference(C.normalize(s.emb), t)), t


@pytest.mark.parametrize("seed", [0, 3])
def test_exact_path_equals_dense_hac_with_cannot_link(seed):
    s = synthetic_faces(2500, seed=seed)
    exact = C.cluster_faces(s.keys, s.emb, s.photo, 0.55, method="exact")
    dense = C.cluster_faces(s.keys, s.emb, s.photo, 0.55, method="dense")
    assert np.array_equal(exact.labels, dense.labels)  # canonical numbering makes them identical


def test_graph_path_on_the_complete_graph_is_exact():
    s = synthetic_faces(600, seed=5)
    x = C.normalize(s.emb)
    g = C.group_ids(s.photo)
    full = np.array(np.triu_indices(len(x), 1)).T
    assert _same_partition(C.graph_average_linkage(x, g, 0.55, edges=full), C.dense_average_linkage(x, g, 0.55))


def test_two_faces_of_one_photo_never_share_a_cluster():
    rng = np.random.default_rng(0)
    base = C.normalize(rng.normal(size=(1, 64)))
    # ten near-identical faces, in five photos of two faces each: without cannot-link one cluster
    emb = C.normalize(base + 0.01 * rng.normal(size=(10, 64)))
    photos = np.repeat(np.arange(5), 2)
    keys = [f"k{i}" for i in range(10)]
    for method in ("exact", "graph", "dense"):
        lab = C.cluster_faces(keys, emb, photos, 0.55, method=method).labels
        for p in range(5):
            a, b = lab[photos == p]
            assert a != b, method
        assert len(set(lab.tolist())) == 2, method  # the best it can do


def test_row_order_does_not_change_clusters_or_numbers():
    s = synthetic_faces(3000, seed=7)
    ref = C.cluster_faces(s.keys, s.emb, s.photo, 0.55)
    perm = np.random.default_rng(1).permutation(len(s))
    for method in ("exact", "graph"):
        got = C.cluster_faces(s.keys[perm], s.emb[perm], s.photo[perm], 0.55, method=method)
        base = ref.labels if method == "exact" else C.cluster_faces(s.keys, s.emb, s.photo, 0.55, method=method).labels
        assert np.array_equal(got.labels, base[perm]), method


def test_numbering_is_by_size_then_smallest_key():
    lab = C.canonical_labels(np.array([5, 5, 9, 9, 9, 1]), np.array(["e", "a", "d", "c", "b", "f"]))
    assert lab.tolist() == [1, 1, 0, 0, 0, 2]


def test_scalable_path_quality_close_to_exact():
    from facesets.metrics import bcubed_prf

    s = synthetic_faces(8000, seed=11)
    exact = C.cluster_faces(s.keys, s.emb, s.photo, 0.55, method="exact").labels
    graph = C.cluster_faces(s.keys, s.emb, s.photo, 0.55, method="graph", k=32).labels
    p, r, f = bcubed_prf(exact, graph)
    assert f > 0.98, (p, r, f)


def _pairs_under_threshold(emb, labels, photos, t) -> int:
    """Pairs of final clusters whose average-linkage distance is under ``t`` and that share no photo."""
    x = C.normalize(emb).astype(np.float64)
    labels = np.unique(labels, return_inverse=True)[1]
    k = int(labels.max()) + 1
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, labels, x)
    cnt = np.bincount(labels, minlength=k).astype(np.float64)
    d = 1.0 - (sums @ sums.T) / np.outer(cnt, cnt)
    g = C.group_ids(photos)
    shares = np.zeros((k, k), bool)
    for p in np.unique(g):
        c = np.unique(labels[g == p])
        shares[np.ix_(c, c)] = True
    ii, jj = np.triu_indices(k, 1)
    return int(((d[ii, jj] < t) & ~shares[ii, jj]).sum())


def _graph_labels(s, t, **kw):
    x, g = C.normalize(s.emb), C.group_ids(s.photo)  # synthetic rows are sorted by key already
    return C.graph_average_linkage(x, g, t, **kw)


@pytest.mark.parametrize("repair_exact_max", [C.REPAIR_EXACT_MAX, 0])  # complete search / kNN over clusters
def test_graph_repair_leaves_no_cluster_pair_under_the_threshold(repair_exact_max):
    """A sparse kNN graph (k=4) strands parts of identities; the repair finds them among clusters."""
    from facesets.metrics import bcubed_prf

    s = synthetic_faces(4000, seed=13)
    t = 0.55
    exact = C.cluster_faces(s.keys, s.emb, s.photo, t, method="exact").labels
    assert _pairs_under_threshold(s.emb, exact, s.photo, t) == 0  # what exact HAC guarantees
    bare = _graph_labels(s, t, k=4, repair=False)
    assert _pairs_under_threshold(s.emb, bare, s.photo, t) > 10  # the gap the repair closes
    fixed = _graph_labels(s, t, k=4, repair_exact_max=repair_exact_max)
    assert _pairs_under_threshold(s.emb, fixed, s.photo, t) == 0
    f_bare, f_fixed = bcubed_prf(exact, bare)[2], bcubed_prf(exact, fixed)[2]
    assert f_fixed > 0.99 and f_fixed > f_bare + 0.02, (f_bare, f_fixed)
    for p in np.unique(s.photo):  # cannot-link still holds
        lab = fixed[s.photo == p]
        assert len(lab) == len(set(lab.tolist()))


def test_repair_changes_nothing_on_the_complete_graph():
    s = synthetic_faces(600, seed=5)
    x, g = C.normalize(s.emb), C.group_ids(s.photo)
    full = np.array(np.triu_indices(len(x), 1)).T
    plain = C.graph_average_linkage(x, g, 0.55, edges=full)
    repaired = C.graph_average_linkage(x, g, 0.55, edges=full, repair=True)
    assert np.array_equal(plain, repaired)


def test_auto_above_exact_max_takes_the_graph_path_close_to_exact():
    """Just above ``exact_max`` (here a small one) auto switches to the kNN graph + repair.

    k=8 makes the kNN graph miss many pairs (BCubed F 0.964 vs exact without the repair).
    """
    from facesets.metrics import bcubed_prf

    s = synthetic_faces(6000, seed=17)
    exact = C.cluster_faces(s.keys, s.emb, s.photo, 0.55, method="exact").labels
    auto = C.cluster_faces(s.keys, s.emb, s.photo, 0.55, exact_max=5000, k=8)
    assert auto.method == "graph"
    assert _pairs_under_threshold(s.emb, auto.labels, s.photo, 0.55) == 0
    assert bcubed_prf(exact, auto.labels)[2] > 0.995
    perm = np.random.default_rng(2).permutation(len(s))
    again = C.cluster_faces(s.keys[perm], s.emb[perm], s.photo[perm], 0.55, exact_max=5000, k=8).labels
    assert np.array_equal(again, auto.labels[perm])  # same clusters and numbers in any row order


def test_centroids_are_renormalised():
    emb = C.normalize(np.array([[1, 0], [0, 1], [1, 1]], np.float32))
    c = C.centroids(emb, np.array([0, 0, 1]))
    assert np.allclose(np.linalg.norm(c, axis=1), 1)
    assert np.allclose(c[0], [2**-0.5, 2**-0.5], atol=1e-6)


def test_outlier_rejection_only_for_big_clusters_and_in_passes():
    rng = np.random.default_rng(3)
    centre = C.normalize(rng.normal(size=(1, 32)))
    good = C.normalize(centre + 0.15 * rng.normal(size=(8, 32)))
    stranger = C.normalize(rng.normal(size=(1, 32)))
    emb = np.vstack([good, stranger, good[:2], stranger])
    labels = np.array([0] * 9 + [1, 1, 1])  # cluster 1 has 3 faces: below min_size, untouched
    out = C.reject_outliers(emb, labels, thresholds=(0.55, 0.45), min_size=4)
    assert out[8] == -1 and (out[:8] == 0).all() and (out[9:] == 1).all()


def test_centroid_merge_respects_threshold_and_cannot_link():
    rng = np.random.default_rng(4)
    a = C.normalize(rng.normal(size=(1, 32)))
    half1 = C.normalize(a + 0.1 * rng.normal(size=(4, 32)))
    half2 = C.normalize(a + 0.1 * rng.normal(size=(4, 32)))
    other = C.normalize(rng.normal(size=(4, 32)))
    emb = np.vstack([half1, half2, other])
    labels = np.repeat([0, 1, 2], 4)
    photos = np.arange(12)
    merged = C.centroid_merge(emb, labels, photos, 0.40)
    assert len(set(merged[:8].tolist())) == 1 and merged[8] != merged[0]
    photos_shared = photos.copy()
    photos_shared[4] = photos_shared[0]  # one photo in both halves: they must stay apart
    kept = C.centroid_merge(emb, labels, photos_shared, 0.40)
    assert kept[0] != kept[4]


def test_nearest_identity_threshold_and_one_face_per_identity_per_photo():
    rng = np.random.default_rng(5)
    ids = C.normalize(rng.normal(size=(3, 32)))
    near0 = C.normalize(ids[0] + 0.05 * rng.normal(size=(2, 32)))  # two faces like identity 0 ...
    far = C.normalize(rng.normal(size=(1, 32)))
    emb = np.vstack([near0, far])
    photos = ["p", "p", "q"]  # ... in the same photo: only the closer one may join
    m = C.nearest_identity(emb, photos, ids, np.arange(3), threshold=0.45)
    d = 1 - C.normalize(near0) @ ids[0]
    closer = int(np.argmin(d))
    assert m.identity[closer] == 0 and m.identity[1 - closer] == -1 and m.identity[2] == -1
    assert np.isclose(m.distance[closer], d[closer], atol=1e-5)
    taken = C.nearest_identity(emb, photos, ids, np.arange(3), threshold=0.45, taken={("p", 0)})
    assert (taken.identity == -1).all()
    # several prototypes per identity: the closest one counts
    protos = np.vstack([ids[1], C.normalize(near0[0])])
    multi = C.nearest_identity(emb[:1], ["x"], protos, np.array([1, 1]), threshold=0.45)
    assert multi.identity[0] == 1


@pytest.mark.slow
def test_exact_path_equals_textbook_hac_on_real_faces(demo_photos, tmp_path, opencv_analyzer):
    """Real SFace embeddings of the demo photos: exact path == SciPy's dense HAC, at several cuts."""
    from facesets import schema
    from facesets.embed import EmbedOptions, embed_listing
    from facesets.listing import stage_source
    from facesets.options import build
    from facesets.store import FaceStore

    listing = stage_source("demo", demo_photos, ["**/*.jpg", "**/*.png"], [], tmp_path / "l.parquet")
    out = tmp_path / "faces.parquet"
    embed_listing(
        listing,
        opencv_analyzer,
        FaceStore(tmp_path / "store", opencv_analyzer.model_id),
        build(EmbedOptions, "embed"),
        out,
        True,
    )
    faces = schema.read_table(out)
    assert len(faces) > 150
    emb = np.stack(faces.embedding.to_numpy())
    for t in (0.52, 0.7, 0.85):  # 0.85 forces many merges, with cannot-link in play
        exact = C.cluster_faces(faces.face_key, emb, faces.sha256, t, method="exact").labels
        dense = C.cluster_faces(faces.face_key, emb, faces.sha256, t, method="dense").labels
        assert np.array_equal(exact, dense), t
        alone = np.arange(len(faces))
        unconstrained = C.cluster_faces(faces.face_key, emb, alone, t, method="exact").labels
        assert _same_partition(unconstrained, _scipy_reference(C.normalize(emb), t)), t


def test_assign_or_cluster_routes_then_clusters_the_rest():
    s = synthetic_faces(3000, seed=21)
    big = np.bincount(s.identity).argsort()[::-1][:3]  # three well-known people
    known = np.isin(s.identity, big)
    protos = C.normalize(np.stack([s.emb[s.identity == i].mean(0) for i in big]))
    newcomers = ~known & (np.bincount(s.identity)[s.identity] >= 5)
    out = C.assign_or_cluster(
        s.keys[known | newcomers],
        s.emb[known | newcomers],
        s.photo[known | newcomers],
        protos,
        np.arange(3),
        0.45,
        0.55,
    )
    truth = s.identity[known | newcomers]
    for j, person in enumerate(big):
        got = out.identity[truth == person]
        assert (got == j).mean() > 0.9  # nearly all of a known person's faces join it
    assert (out.identity[~np.isin(truth, big)] >= 3).all()  # strangers never join a known person
    assert out.n_new > 0 and out.identity.max() == 2 + out.n_new
    photos = s.photo[known | newcomers]
    for ident in np.unique(out.identity):
        ph = photos[out.identity == ident]
        assert len(ph) == len(set(ph.tolist()))  # cannot-link across routing and clustering
