"""Pairwise and BCubed P/R/F on hand-computed examples; the synthetic face generator's contract."""

from __future__ import annotations

from fractions import Fraction as Fr

import numpy as np
import pytest

from facesets.metrics import bcubed_prf, pairwise_prf
from facesets.synth import pair_distance_percentiles, synthetic_faces


def f1(p, r):
    return 2 * p * r / (p + r)


def approx(values):
    return pytest.approx([float(v) for v in values], abs=1e-12)


# --------------------------------------------------------------------------- metrics


def test_perfect_clustering_is_one_whatever_the_label_names():
    truth = [0, 0, 0, 1, 1, 2]
    pred = ["b", "b", "b", "a", "a", "z"]
    assert pairwise_prf(truth, pred) == approx([1, 1, 1])
    assert bcubed_prf(truth, pred) == approx([1, 1, 1])


def test_all_in_one_cluster():
    truth = [0, 0, 1, 1, 2]  # classes of 2, 2, 1
    pred = [7] * 5
    # pairs: 2 true pairs out of C(5,2) = 10 predicted
    assert pairwise_prf(truth, pred) == approx([Fr(2, 10), 1, f1(Fr(2, 10), 1)])
    # BCubed precision per item: 2/5, 2/5, 2/5, 2/5, 1/5 -> 9/25
    assert bcubed_prf(truth, pred) == approx([Fr(9, 25), 1, f1(Fr(9, 25), 1)])


def test_all_singletons():
    truth = [0, 0, 1, 1, 2]
    pred = [0, 1, 2, 3, 4]
    # no predicted pair: precision 1 by convention, recall 0
    assert pairwise_prf(truth, pred) == approx([1, 0, 0])
    # BCubed recall per item: 1/2, 1/2, 1/2, 1/2, 1 -> 3/5
    assert bcubed_prf(truth, pred) == approx([1, Fr(3, 5), f1(1, Fr(3, 5))])


def test_singletons_in_truth_and_pred_count_as_items():
    truth = [0, 1, 2]
    pred = [0, 1, 2]
    assert bcubed_prf(truth, pred) == approx([1, 1, 1])
    assert pairwise_prf(truth, pred) == approx([1, 1, 1])  # no pair anywhere: 1 by convention


def test_small_hand_example():
    truth = [0, 0, 0, 1, 1, 2]
    pred = [0, 0, 1, 1, 1, 1]
    # pairs: TP = 1 ({0,1}) + 1 ({3,4}) = 2; predicted 1 + 6 = 7; true 3 + 1 = 4
    assert pairwise_prf(truth, pred) == approx([Fr(2, 7), Fr(1, 2), Fr(4, 11)])
    # BCubed P: 1, 1, 1/4, 2/4, 2/4, 1/4 -> 7/12; R: 2/3, 2/3, 1/3, 1, 1, 1 -> 7/9; F = 2/3
    assert bcubed_prf(truth, pred) == approx([Fr(7, 12), Fr(7, 9), Fr(2, 3)])


def test_textbook_example_manning_raghavan_schuetze():
    # Introduction to IR, fig. 16.4: clusters {5x, 1o}, {1x, 4o, 1d}, {2x, 3d}
    pred = [1] * 6 + [2] * 6 + [3] * 5
    truth = list("xxxxxo") + list("xooood") + list("xxddd")
    # the book: TP = 20, FP = 20, FN = 24
    p, r = Fr(20, 40), Fr(20, 44)
    assert pairwise_prf(truth, pred) == approx([p, r, f1(p, r)])
    # BCubed: P = (26/6 + 18/6 + 13/5) / 17, R = (30/8 + 17/5 + 10/4) / 17
    p = (Fr(26, 6) + Fr(18, 6) + Fr(13, 5)) / 17
    r = (Fr(30, 8) + Fr(17, 5) + Fr(10, 4)) / 17
    assert bcubed_prf(truth, pred) == approx([p, r, f1(p, r)])


def test_swapping_truth_and_pred_swaps_precision_and_recall():
    rng = np.random.default_rng(3)
    t, q = rng.integers(0, 7, 200), rng.integers(0, 9, 200)
    for fn in (pairwise_prf, bcubed_prf):
        p, r, f = fn(t, q)
        assert fn(q, t) == pytest.approx((r, p, f))


def brute_force(truth, pred):
    t, q = np.asarray(truth), np.asarray(pred)
    same_t, same_q = t[:, None] == t[None, :], q[:, None] == q[None, :]
    both = (same_t & same_q).sum(1)
    bp, br = float((both / same_q.sum(1)).mean()), float((both / same_t.sum(1)).mean())
    iu = np.triu_indices(len(t), 1)
    tp, pp, tt = (same_t & same_q)[iu].sum(), same_q[iu].sum(), same_t[iu].sum()
    pp_, pr_ = (tp / pp if pp else 1.0), (tp / tt if tt else 1.0)
    return (pp_, pr_), (bp, br)


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_the_per_item_and_per_pair_definitions(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    truth, pred = rng.integers(0, 8, n), rng.integers(0, 12, n)
    (pp, pr), (bp, br) = brute_force(truth, pred)
    assert pairwise_prf(truth, pred)[:2] == pytest.approx((pp, pr))
    assert bcubed_prf(truth, pred)[:2] == pytest.approx((bp, br))


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError):
        bcubed_prf([0, 1], [0])


# --------------------------------------------------------------------------- synthetic faces


def test_synthetic_faces_contract():
    f = synthetic_faces(3000, seed=5)
    n = len(f)
    assert n == 3000 and f.emb.shape == (n, 128) and f.emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(f.emb, axis=1), 1.0, atol=1e-5)
    assert len(np.unique(f.keys)) == n and list(f.keys) == sorted(f.keys)
    # a person appears at most once per photo; photos hold 1..6 faces
    pairs = np.unique(np.stack([f.photo, f.identity], 1), axis=0)
    assert len(pairs) == n
    assert 1 <= np.bincount(f.photo).max() <= 6 and np.bincount(f.photo).min() >= 0
    # noise faces are identities of their own; Zipf-like sizes with a singleton tail
    sizes = np.bincount(f.identity)
    assert (sizes[np.unique(f.identity[f.noise])] == 1).all()
    assert sizes.max() >= 20 and (sizes == 1).sum() > len(sizes) / 3
    # deterministic
    g = synthetic_faces(3000, seed=5)
    assert np.array_equal(f.emb, g.emb) and np.array_equal(f.keys, g.keys)


def test_synthetic_faces_geometry():
    d = pair_distance_percentiles(synthetic_faces(5000, seed=1), n_pairs=20000)
    assert d["same"]["p5"] > 0.2 and d["same"]["p50"] < 0.5
    assert d["different"]["p5"] > 0.7 and 0.85 < d["different"]["p50"] < 0.95
    assert 0.45 < d["lookalike"]["p50"] < 0.7
