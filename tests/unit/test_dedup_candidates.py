"""dedup's candidate pairs (issue #18): each photo's nearest by hash and each face's nearest faces,
so a photo with hundreds of copies costs O(copies x neighbours) pairs, not copies squared."""

from __future__ import annotations

import numpy as np
import pandas as pd

from facesets import dedup


def _brute(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    d = dedup.hamming(hashes[:, None], hashes[None, :]).astype(np.int64)
    np.fill_diagonal(d, 99)
    d[d > max_distance] = 99
    return d


def _connected(n: int, pairs: set[tuple[int, int]]) -> int:
    uf = dedup._UnionFind(n)
    for a, b in pairs:
        uf.union(a, b)
    return len({uf.find(i) for i in range(n)})


def _noisy_copies(rng: np.random.Generator, groups: int, copies: int, flips: int) -> np.ndarray:
    base = rng.integers(0, 2**64 - 1, size=groups, dtype=np.uint64)
    out = []
    for g in range(groups):
        for _ in range(copies):
            v = int(base[g])
            for b in rng.choice(64, size=int(rng.integers(0, flips + 1)), replace=False):
                v ^= 1 << int(b)
            out.append(v)
    return np.array(out, np.uint64).view(np.int64)


def test_all_pairs_within_the_distance_without_a_limit():
    h = _noisy_copies(np.random.default_rng(1), groups=40, copies=12, flips=6)
    d = _brute(h, 12)
    ii, jj = np.nonzero(d <= 12)
    want = {(int(i), int(j)) for i, j in zip(ii, jj, strict=True) if i < j}
    assert dedup.phash_pairs(h, 12, neighbours=0) == want


def test_each_photo_keeps_exactly_its_nearest_and_the_pairs_stay_linear():
    rng = np.random.default_rng(2)
    h = _noisy_copies(rng, groups=6, copies=150, flips=5)  # 6 photos with 150 copies each
    k = 8
    got = dedup.phash_pairs(h, 12, neighbours=k)
    d = _brute(h, 12)
    for i in range(0, len(h), 37):
        order = np.lexsort((np.arange(len(h)), d[i]))
        nearest = [int(j) for j in order[:k] if d[i, j] <= 12]
        assert all((min(i, j), max(i, j)) in got for j in nearest)
    everything = dedup.phash_pairs(h, 12, neighbours=0)
    assert got <= everything
    assert len(got) <= k * len(h) < len(everything) / 5  # 150 copies: 11,175 pairs each without the limit
    # the nearest-neighbour pairs still join each photo's copies into one group
    assert _connected(len(h), got) == _connected(len(h), everything) == 6


def test_identical_copies_tie_to_the_lowest_index():
    h = np.full(50, 12345, np.int64)
    got = dedup.phash_pairs(h, 0, neighbours=3)
    assert got == {(i, j) for j in range(50) for i in range(3) if i < j} | {(i, 3) for i in range(3)}
    assert _connected(50, got) == 1


def test_face_neighbours_skip_faces_of_the_same_photo():
    rng = np.random.default_rng(3)
    centre = rng.normal(size=16)
    emb = centre + 0.01 * rng.normal(size=(30, 16))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    shas = [f"s{i // 3}" for i in range(30)]  # 10 photos with 3 near-identical faces each
    faces = pd.DataFrame({"sha256": shas, "embedding": list(emb.astype(np.float32))})
    index = {f"s{i}": i for i in range(10)}
    everything = dedup.face_pairs(faces, index, 0.2, neighbours=0)
    assert everything == {(i, j) for i in range(10) for j in range(i + 1, 10)}
    got = dedup.face_pairs(faces, index, 0.2, neighbours=2)
    assert got <= everything and all(a != b for a, b in got)
    assert len(got) <= 2 * 30
    assert _connected(10, got) == 1
    # a photo missing from the index (unreadable) is never paired
    del index["s0"]
    assert all(0 not in p for p in dedup.face_pairs(faces, index, 0.2, neighbours=2))
