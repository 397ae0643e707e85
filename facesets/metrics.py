"""External clustering quality against ground truth: pairwise and BCubed precision/recall/F.

Both are computed from the contingency table of (true class, predicted cluster) counts, so
they cost O(n log n) and never build an n×n matrix. Labels may be any hashable values that
NumPy can sort (ints, strings); every item must carry one label in each labelling, and a
singleton is simply a class or cluster of size one.

* **Pairwise** (pair-counting): precision = share of the pairs put together by ``pred``
  that are together in ``truth``; recall = share of the pairs together in ``truth`` that
  ``pred`` puts together. With no predicted (true) pair at all, precision (recall) is 1 by
  convention: nothing was claimed (nothing was to be found).
* **BCubed** (Bagga & Baldwin 1998; Amigó, Gonzalo, Artiles & Verdejo 2009): per item ``e``,
  precision(e) = |cluster(e) ∩ class(e)| / |cluster(e)| and recall(e) =
  |cluster(e) ∩ class(e)| / |class(e)|, both counting ``e`` itself, averaged over all items.
  From the contingency counts ``n_ij``: P = Σ n_ij² / |cluster j| / N and
  R = Σ n_ij² / |class i| / N.

F is the harmonic mean 2PR / (P + R) (0 when P + R = 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _codes(labels: Sequence | np.ndarray) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    _, inv = np.unique(arr, return_inverse=True)
    return inv.reshape(-1).astype(np.int64)


def contingency(truth: Sequence | np.ndarray, pred: Sequence | np.ndarray) -> tuple[np.ndarray, ...]:
    """Non-zero cells of the contingency table: (class index, cluster index, count) per cell,
    plus the class sizes and cluster sizes (indexed by those indices)."""
    t, p = _codes(truth), _codes(pred)
    if len(t) != len(p):
        raise ValueError(f"truth and pred differ in length: {len(t)} != {len(p)}")
    n_pred = int(p.max()) + 1 if len(p) else 0
    cells, counts = np.unique(t * max(n_pred, 1) + p, return_counts=True)
    ci, cj = cells // max(n_pred, 1), cells % max(n_pred, 1)
    class_size = np.bincount(t)
    cluster_size = np.bincount(p)
    return ci, cj, counts.astype(np.int64), class_size, cluster_size


def _pairs(sizes: np.ndarray) -> float:
    x = sizes.astype(np.float64)
    return float((x * (x - 1)).sum() / 2)


def _f1(p: float, r: float) -> float:
    return 2.0 * p * r / (p + r) if p + r > 0 else 0.0


def pairwise_prf(truth: Sequence | np.ndarray, pred: Sequence | np.ndarray) -> tuple[float, float, float]:
    """Pair-counting (precision, recall, F1) of ``pred`` against ``truth``."""
    _, _, n_ij, a, b = contingency(truth, pred)
    if not len(n_ij):
        return 1.0, 1.0, 1.0
    tp, true_pairs, pred_pairs = _pairs(n_ij), _pairs(a), _pairs(b)
    p = tp / pred_pairs if pred_pairs else 1.0
    r = tp / true_pairs if true_pairs else 1.0
    return p, r, _f1(p, r)


def bcubed_prf(truth: Sequence | np.ndarray, pred: Sequence | np.ndarray) -> tuple[float, float, float]:
    """BCubed (precision, recall, F1) of ``pred`` against ``truth`` (per-item averages)."""
    ci, cj, n_ij, a, b = contingency(truth, pred)
    n = int(n_ij.sum())
    if n == 0:
        return 1.0, 1.0, 1.0
    sq = n_ij.astype(np.float64) ** 2
    p = float((sq / b[cj]).sum() / n)
    r = float((sq / a[ci]).sum() / n)
    return p, r, _f1(p, r)
