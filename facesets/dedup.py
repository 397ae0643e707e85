"""The ``dedup`` stage: byte-identical and visual near-duplicate photo groups -> duplicates.json.

Byte-identical groups come straight from the listing (one sha256, several paths).

Near-duplicates are the *same photo* resized, recompressed, re-encoded in another format,
padded (letterbox bars) or cropped (with ``crops`` on, the default, any cut-out whose content
lies within the other photo; off, only light crops); a different photo of the same person,
even from the same burst, is not one. Two stages (docs/dedup.md has the measurements):

1. Candidate pairs, cheap and generous: (a) a 64-bit DCT perceptual hash of each photo's
   content (uniform borders trimmed first, so letterboxing does not change it) within
   ``phash_distance`` bits, and (b) two faces of different photos whose embeddings are
   within ``face_distance`` (cosine) of each other, which catches crops the hash misses.
2. Verification of each candidate pair on pixels: both photos are decoded in grey (a JPEG's
   own luma channel, DCT-scaled to at least twice the working size: ``imageio.decode(grey=True)``), trimmed
   and scaled to ``work_size`` on the long side; the second is aligned onto the first by a
   similarity transform (a plain resize when the aspect ratios agree, else ORB features +
   RANSAC, at least ``min_inliers`` inliers); then the aligned pixels must agree: the overlap
   covers at least ``min_overlap`` of one photo's content (``crops``: a cut-out) or of each
   (light crops only), the
   normalised cross-correlation over the overlap is at least ``min_ncc``, and no cell of an
   8x8 grid over the overlap falls below ``min_cell_ncc`` (a moved head or a changed face
   in an otherwise identical frame fails there).

Verified pairs are joined transitively (union-find); groups are numbered ``nd_0001`` ... in
the order of their first member's path. Per-image hashes are cached by sha256 under
``<cache_dir>/phash-v2/`` and pair verdicts by both sha256s and a settings digest under
``<cache_dir>/verdict-v4/`` (facesets/segcache.py), so a rerun hashes only new photos and
verifies only new pairs; pairs already joined through others are never verified
(``verify_pairs``). Pairs are verified one component of the candidate graph after another
(``verification_order``), and the working copies kept meanwhile are bounded (``WORK_BYTES``,
least recently used dropped first), so memory does not grow with the library.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa

from facesets import imageio, schema, thresholds
from facesets.atomic import write_json
from facesets.segcache import SegmentCache

log = logging.getLogger(__name__)

VERSION = 1
HASH_VERSION = 2  # 2: hashed from the JPEG's own luma (decode(grey=True)), not RGB -> grey
GRID = 8
TRIM_TOLERANCE = 12  # grey levels: a border row/column this flat is padding
CELL_RMS_SCALE = 32.0  # grey levels: a cell also scores 1 - rms/32 (0.5 at 16 levels rms: a flat cell passes)
MIN_SCALE2 = 1e-4  # |det| of a b -> a transform below this shrinks b to nothing: not an alignment
HASH_SCHEMA = pa.schema([("sha256", pa.string()), ("phash", pa.int64()), ("error", pa.string())])


@dataclass(frozen=True)
class DedupOptions:
    """The `dedup` section (defaults in the schema only: build it with ``dedup_options``)."""

    phash_distance: int  # candidate: hash bits that may differ (of 64)
    face_distance: float | None  # candidate: face cosine distance; None = half the model's match threshold
    neighbours: int  # candidates per photo (hash) and per face: the nearest this many (0 = all within distance)
    work_size: int  # verification: long side of the grey working copies
    min_inliers: int  # ORB/RANSAC inliers for a similarity transform
    min_overlap: float  # share of one photo's content inside the other (of each without crops)
    crops: bool  # a cut-out of a photo is its near-duplicate (False: light crops only)
    min_ncc: float  # normalised cross-correlation over the overlap
    min_cell_ncc: float  # the worst textured cell of an 8x8 grid over the overlap
    workers: int  # threads (0 in the config = the machine's threads, resolved by dedup_options)
    max_pixels: int  # decoder limit: embed.max_pixels


def dedup_options(values: Mapping[str, Any] | None = None, **override: Any) -> DedupOptions:
    """DedupOptions from a `dedup` section (schema defaults filled in, validated); ``override``
    sets fields directly. ``max_pixels`` is embed's decoder limit unless given."""
    from facesets.options import build, section, threads

    known = set(section("dedup"))
    values = {k: v for k, v in (values or {}).items() if k in known}
    override.setdefault("max_pixels", section("embed")["max_pixels"])
    opts = build(DedupOptions, "dedup", values, **override)
    return replace(opts, workers=threads(opts.workers))


@dataclass
class DedupStats:
    images: int = 0
    byte_identical_groups: int = 0
    hashed: int = 0  # photos hashed this run (the rest came from the cache)
    candidates: int = 0
    verified: int = 0  # candidate pairs that passed (checked this run or cached)
    cached: int = 0  # candidate verdicts taken from the verdict cache
    skipped: int = 0  # candidates already in one group through other pairs: not verified
    checked: int = 0  # candidates verified on pixels this run
    evicted: int = 0  # working copies dropped for memory and decoded again when needed
    failed_pairs: int = 0  # pairs whose verification raised: reported in the document, skipped
    near_duplicate_groups: int = 0
    near_duplicate_images: int = 0
    seconds: float = 0.0


# ---------------------------------------------------------------- pixels


def trim_borders(grey: np.ndarray, tol: int = TRIM_TOLERANCE) -> np.ndarray:
    """Cut uniform rows/columns (letterbox or pillarbox bars) from the edges."""

    def flat_run(lines: np.ndarray) -> int:
        spread = lines.max(axis=1).astype(np.int16) - lines.min(axis=1).astype(np.int16)
        busy = np.flatnonzero(spread > tol)
        return int(busy[0]) if busy.size else len(lines)

    h, w = grey.shape
    top, bottom = flat_run(grey), flat_run(grey[::-1])
    left, right = flat_run(grey.T), flat_run(grey.T[::-1])
    if top + bottom >= h - 8 or left + right >= w - 8:
        return grey  # (nearly) uniform image: keep it whole
    return grey[top : h - bottom, left : w - right]


def load_grey(path: str, size: int, max_pixels: int = 250_000_000, decode_side: int | None = None) -> np.ndarray:
    """Grey, oriented, borders trimmed, long side ``size`` (area-averaged, or upscaled).

    ``decode_side``: the long side to decode at least (JPEG DCT scaling); default ``2 * size``.
    """
    dec = imageio.decode(path, target_long_side=decode_side or size * 2, max_pixels=max_pixels, grey=True)
    return scaled(trim_borders(grey_pixels(dec)), size)


def grey_pixels(dec: imageio.Decoded) -> np.ndarray:
    """The grey plane of a ``decode(grey=True)``: a JPEG's own luma, else RGB -> grey (BT.601)."""
    return dec.rgb if dec.rgb.ndim == 2 else cv2.cvtColor(dec.rgb, cv2.COLOR_RGB2GRAY)


def scaled(grey: np.ndarray, size: int) -> np.ndarray:
    """``grey`` with long side ``size`` (area-averaged down, or linear up)."""
    h, w = grey.shape
    f = size / max(h, w)
    dsize = (max(1, round(w * f)), max(1, round(h * f)))
    return cv2.resize(grey, dsize, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)


HASH_SIDE = 256  # the hash's working copy (decoded at >= 2x this)


def work_decode_side(opts: DedupOptions) -> int:
    """Verification copies decode like the hash's (one decode gives both), at least ``work_size``."""
    return max(2 * HASH_SIDE, opts.work_size)


def load_work_copy(path: str, opts: DedupOptions) -> np.ndarray:
    """The verification working copy (the same pixels whether made here or in the hash pass)."""
    return load_grey(path, opts.work_size, opts.max_pixels, work_decode_side(opts))


def phash(grey: np.ndarray) -> int:
    """64-bit DCT hash: the 8x8 lowest frequencies (DC excluded: 63 bits used) above their median."""
    small = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    coeffs = cv2.dct(small)[:8, :8].reshape(-1)[1:]
    bits = coeffs > np.median(coeffs)
    value = 0
    for b in bits:
        value = (value << 1) | int(b)
    return value - (1 << 63) if value >= (1 << 63) else value  # as signed int64


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(np.bitwise_xor(a.view(np.uint64), b.view(np.uint64)))


# ---------------------------------------------------------------- verification


@dataclass(frozen=True)
class Match:
    ok: bool
    how: str  # resize | orb | -
    inliers: int = 0
    overlap: float = 0.0
    ncc: float = 0.0
    cell_ncc: float = 0.0


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / den) if den > 1e-6 else 1.0


def compare_aligned(a: np.ndarray, b: np.ndarray, m: np.ndarray) -> tuple[float, float, float]:
    """((share of a, share of b), ncc, worst cell) of ``b`` warped by ``m`` (2x3, b -> a) onto ``a``.

    The shares are how much of each photo's content lies inside the other. A cell's score
    is the larger of its NCC and ``1 - rms / CELL_RMS_SCALE`` (rms difference in grey levels):
    flat cells, where NCC only sees compression noise, pass on close values, textured cells
    pass on correlation; a cell whose content changed fails both.
    """
    h, w = a.shape
    bw = cv2.warpAffine(b, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
    mask = cv2.warpAffine(np.full(b.shape, 255, np.uint8), m, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)
    mask = cv2.erode(mask, np.ones((5, 5), np.uint8)) > 0
    area = float(mask.sum())
    scale2 = abs(float(np.linalg.det(m[:, :2])))
    if area < 256 or not math.isfinite(scale2) or scale2 < MIN_SCALE2:
        return (0.0, 0.0), 0.0, 0.0  # no common area, or a degenerate transform (b collapsed to a line)
    shares = (min(1.0, area / a.size), min(1.0, area / (scale2 * b.size)))
    # compare at the coarser of the two resolutions: blur away resampling/compression detail
    af = cv2.GaussianBlur(a.astype(np.float32), (0, 0), 1.2)
    bf = cv2.GaussianBlur(bw.astype(np.float32), (0, 0), 1.2)
    ncc = _ncc(af[mask], bf[mask])
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))  # the mask's bounding box
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    worst = 1.0
    for gy in range(GRID):
        for gx in range(GRID):
            sy = slice(y0 + (y1 - y0) * gy // GRID, y0 + (y1 - y0) * (gy + 1) // GRID)
            sx = slice(x0 + (x1 - x0) * gx // GRID, x0 + (x1 - x0) * (gx + 1) // GRID)
            cm = mask[sy, sx]
            if cm.sum() < 0.5 * cm.size or cm.sum() < 16:
                continue
            ca, cb = af[sy, sx][cm], bf[sy, sx][cm]
            rms = math.sqrt(float(np.mean((ca - cb) ** 2)))
            worst = min(worst, max(_ncc(ca, cb), 1.0 - rms / CELL_RMS_SCALE))
    return shares, ncc, worst


_ORB_FEATURES = 2000
_ORB_MIN_SIDE = 64  # ORB's pyramid (8 levels, 1.2x) and 31 px patches: smaller images give no features


OrbFeatures = tuple[np.ndarray, np.ndarray | None]  # keypoint positions (k, 2), descriptors (k, 32)


def orb_features(img: np.ndarray) -> OrbFeatures:
    """ORB keypoint positions and descriptors of one working copy (computed once per photo)."""
    if min(img.shape) < _ORB_MIN_SIDE:
        return np.zeros((0, 2), np.float32), None  # cv2 asserts on a pyramid level of 0 pixels (a 30000x8 strip)
    kp, desc = cv2.ORB_create(_ORB_FEATURES).detectAndCompute(img, None)
    return np.float32([k.pt for k in kp]).reshape(-1, 2), desc


RATIO = 0.8  # Lowe's ratio test: the nearest descriptor must be this much nearer than the second


def ratio_matches(query: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(query index, train index) of the ``query`` descriptors whose nearest ``train``
    descriptor passes the ratio test, in query order.

    Exact Hamming 2-NN by faiss's binary flat index: the matches of OpenCV's
    ``BFMatcher(NORM_HAMMING).knnMatch(query, train, k=2)`` (tests/stage/test_dedup_draft.py
    compares them), ~5x faster. Distances are integers and a tie for the nearest fails the
    test whichever index comes first, so the result does not depend on tie order.
    """
    import faiss

    index = faiss.IndexBinaryFlat(train.shape[1] * 8)
    index.add(np.ascontiguousarray(train, np.uint8))
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # this thread's OpenMP setting: dedup's pool is the parallelism
    try:  # (OpenMP threads inside each pool thread wait on each other: 20x slower on a busy machine)
        dist, idx = index.search(np.ascontiguousarray(query, np.uint8), 2)
    finally:
        faiss.omp_set_num_threads(threads)
    good = np.flatnonzero((idx[:, 1] >= 0) & (dist[:, 0] < RATIO * dist[:, 1]))
    return good, idx[good, 0]


def _orb_transform(
    a: np.ndarray, b: np.ndarray, fa: OrbFeatures | None = None, fb: OrbFeatures | None = None
) -> tuple[np.ndarray | None, int]:
    if min(*a.shape, *b.shape) < _ORB_MIN_SIDE:
        return None, 0  # too small for ORB: no features (and cv2 would assert in its pyramid)
    pa_, da = fa if fa is not None else orb_features(a)
    pb_, db = fb if fb is not None else orb_features(b)
    if da is None or db is None or len(pa_) < 8 or len(pb_) < 8:
        return None, 0
    query, train = ratio_matches(db, da)
    if len(query) < 8:
        return None, 0
    src = pb_[query]
    dst = pa_[train]
    m, inl = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=3.0)
    if m is None:
        return None, 0
    return m, int(inl.sum())


def refine_transform(a: np.ndarray, b: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Sub-pixel refinement of ``m`` (b -> a) by ECC on the grey images; ``m`` itself (the same
    object) if ECC fails or wants more than a small correction."""
    warp = cv2.invertAffineTransform(m).astype(np.float32)  # ECC's warp maps a's pixels into b
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-5)
    try:
        _, warp = cv2.findTransformECC(a, b, warp, cv2.MOTION_AFFINE, criteria, None, 3)
    except cv2.error:
        return m
    refined = cv2.invertAffineTransform(warp).astype(np.float64)
    shift = np.abs(refined - m)
    small = shift[:, :2].max() < 0.05 and shift[:, 2].max() < ECC_MAX_SHIFT
    return refined if small else m  # a small correction only


def overlap_of(opts: DedupOptions, shares: tuple[float, float]) -> float:
    """The overlap the threshold applies to: the contained photo's share (crops) or the smaller share."""
    return max(shares) if opts.crops else min(shares)


def _passes(opts: DedupOptions, overlap: float, ncc: float, cell: float) -> bool:
    return overlap >= opts.min_overlap and ncc >= opts.min_ncc and cell >= opts.min_cell_ncc


def verify_pair(
    a: np.ndarray,
    b: np.ndarray,
    opts: DedupOptions,
    features: Callable[[], tuple[OrbFeatures, OrbFeatures]] | None = None,
) -> Match:
    """Is ``b`` the same photo as ``a`` (grey working copies from ``load_grey``)?

    The pair passes if any of three alignments passes: (1) a plain resize (same aspect ratio
    only), (2) ORB + RANSAC (ECC-refined if it fails as given), (3) the resize refined by ECC
    (if phase correlation finds a shift ECC may correct). They are tried cheapest first: the
    ECC of (3), the costliest step, only runs when (1) and (2) failed (the verdict is the same
    in any order; the reported ``how`` is the first that passed).

    ``features``: returns both photos' ``orb_features`` (memoised per photo by the caller);
    without it they are computed here.
    """
    ha, wa = a.shape
    hb, wb = b.shape
    resize = None
    if abs(math.log((wa / ha) / (wb / hb))) < 0.03:  # same aspect ratio: try a plain resize first
        resize = np.array([[wa / wb, 0, 0], [0, ha / hb, 0]], np.float64)
        passed, ov, ncc, cell = _aligned_check(a, b, resize, opts, refine=False)
        if passed:
            return Match(True, "resize", 0, ov, ncc, cell)
    m, inliers = _orb_transform(a, b, *(features() if features is not None else (None, None)))
    if m is None or inliers < opts.min_inliers:
        orb = Match(False, "orb", inliers)
    else:
        passed, ov, ncc, cell = _aligned_check(a, b, m, opts)
        orb = Match(passed, "orb", inliers, ov, ncc, cell)
    if orb.ok or resize is None or not _small_shift(a, b):
        return orb
    refined = refine_transform(a, b, resize)
    if refined is resize:
        return orb  # ECC failed or wanted a large correction: the resize as given failed already
    shares, ncc, cell = compare_aligned(a, b, refined)
    ov = overlap_of(opts, shares)
    return Match(True, "resize", 0, ov, ncc, cell) if _passes(opts, ov, ncc, cell) else orb


ECC_MAX_SHIFT = 8.0  # px: refine_transform accepts no larger correction of the translation


def _small_shift(a: np.ndarray, b: np.ndarray) -> bool:
    """Could ECC's small correction align ``b`` resized onto ``a``? (phase correlation, a few ms)

    Two crops of one photo at other offsets (the usual near-duplicate in an edited library)
    are shifted by more than ECC may correct: refining them would only cost time (ORB aligns
    them next).
    """
    h, w = a.shape
    bb = cv2.resize(b, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
    (dx, dy), _ = cv2.phaseCorrelate(a.astype(np.float32), bb)
    return max(abs(dx), abs(dy)) < 1.5 * ECC_MAX_SHIFT


def _aligned_check(
    a: np.ndarray, b: np.ndarray, m: np.ndarray, opts: DedupOptions, refine: bool = True
) -> tuple[bool, float, float, float]:
    """(passes, overlap, ncc, worst cell) of ``b`` aligned by ``m``: as given, else ECC-refined.

    The ECC refinement (~0.3 s on 512 px copies, most of a pair's cost) only runs when the
    alignment as given fails (and ``refine``): a transform from hundreds of RANSAC inliers, or a
    plain resize of the same frame, usually passes as it is.
    """
    shares, ncc, cell = compare_aligned(a, b, m)
    ov = overlap_of(opts, shares)
    if _passes(opts, ov, ncc, cell) or not refine:
        return _passes(opts, ov, ncc, cell), ov, ncc, cell
    refined = refine_transform(a, b, m)
    if refined is m:  # no correction: the same comparison again would fail the same way
        return False, ov, ncc, cell
    shares, ncc, cell = compare_aligned(a, b, refined)
    ov = overlap_of(opts, shares)
    return _passes(opts, ov, ncc, cell), ov, ncc, cell


# ---------------------------------------------------------------- candidates


def nearest_results(
    lims: np.ndarray, dist: np.ndarray, ids: np.ndarray, k: int, owner: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(query, result) rows of a range search's results, each query's ``k`` nearest (0 = all).

    ``lims``/``dist``/``ids`` as faiss's ``range_search`` returns them (smaller ``dist`` is
    nearer). Results that are the query itself, or (with ``owner``, one entry per indexed row)
    share the query's owner, are dropped before ranking; ties go to the lower id, so the choice
    does not depend on faiss's result order.
    """
    q = np.repeat(np.arange(len(lims) - 1, dtype=np.int64), np.diff(np.asarray(lims, np.int64)))
    ids = np.asarray(ids, np.int64)
    dist = np.asarray(dist)
    keep = ids != q if owner is None else owner[ids] != owner[q]
    q, ids, dist = q[keep], ids[keep], dist[keep]
    if k <= 0 or not len(q):
        return q, ids
    order = np.lexsort((ids, dist, q))
    q, ids = q[order], ids[order]
    rank = np.arange(len(q)) - np.searchsorted(q, q, side="left")
    return q[rank < k], ids[rank < k]


def _pairs_of(a: np.ndarray, b: np.ndarray) -> set[tuple[int, int]]:
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    return set(zip(lo.tolist(), hi.tolist(), strict=True))


def phash_pairs(hashes: np.ndarray, max_distance: int, neighbours: int = 0) -> set[tuple[int, int]]:
    """Index pairs (i < j) whose hashes differ in at most ``max_distance`` bits: with
    ``neighbours`` > 0, only each photo's ``neighbours`` nearest (a pair is kept when either
    photo has the other among its nearest). Exact (faiss's binary flat index: SIMD popcount)."""
    import faiss

    h = np.ascontiguousarray(hashes, np.int64)
    if len(h) < 2:
        return set()
    codes = h.view(np.uint8).reshape(len(h), 8)
    index = faiss.IndexBinaryFlat(64)
    index.add(codes)
    lims, dist, ids = index.range_search(codes, max_distance + 1)  # binary radius: distance < radius
    q, r = nearest_results(lims, dist, ids, neighbours)
    return _pairs_of(q, r)


def face_pairs(
    faces: pd.DataFrame, image_index: dict[str, int], max_distance: float, neighbours: int = 0
) -> set[tuple[int, int]]:
    """Image index pairs with two faces (of different photos) within ``max_distance`` cosine
    distance; with ``neighbours`` > 0 only each face's ``neighbours`` nearest faces of other photos."""
    import faiss

    faces = faces[faces["sha256"].isin(image_index)]
    if len(faces) < 2:
        return set()
    emb = np.ascontiguousarray(np.stack(faces["embedding"].to_numpy()).astype(np.float32))
    img = faces["sha256"].map(image_index).to_numpy(np.int64)
    index = faiss.IndexFlatIP(emb.shape[1])
    index.add(emb)
    lims, sim, ids = index.range_search(emb, 1.0 - max_distance)
    q, r = nearest_results(lims, -sim, ids, neighbours, owner=img)
    return _pairs_of(img[q], img[r])


# ---------------------------------------------------------------- the stage


def _hash_one(path: str, sha: str, opts: DedupOptions, keep: dict | None = None) -> dict:
    """The photo's hash row; with ``keep``, its verification working copy goes there (same decode)."""
    try:
        dec = imageio.decode(path, target_long_side=work_decode_side(opts), max_pixels=opts.max_pixels, grey=True)
        grey = trim_borders(grey_pixels(dec))
        if keep is not None:
            keep[sha] = scaled(grey, opts.work_size)
        small = grey if work_decode_side(opts) == 2 * HASH_SIDE else None
        if small is None:  # another decode side than the hash's own: decode as the hash always did
            small = trim_borders(
                grey_pixels(imageio.decode(path, target_long_side=2 * HASH_SIDE, max_pixels=opts.max_pixels, grey=True))
            )
        return {"sha256": sha, "phash": phash(scaled(small, HASH_SIDE)), "error": None}
    except imageio.ImageLoadError as exc:
        return {"sha256": sha, "phash": 0, "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - one odd photo must not stop dedup (reported, not cached)
        log.warning("dedup: cannot hash %s: %s: %s", path, type(exc).__name__, exc)
        return {"sha256": sha, "phash": 0, "error": f"{type(exc).__name__}: {exc}"}


KEEP_BYTES = 1 << 30  # working copies kept from the hash pass for verification (beyond: decoded again)


def image_hashes(
    images: pd.DataFrame, cache: SegmentCache, opts: DedupOptions, keep: dict | None = None
) -> tuple[pd.DataFrame, int]:
    """(sha256, phash, error) per image, from the cache or computed (and cached).

    ``keep``: filled with the verification working copies of the photos hashed now (up to
    ``KEEP_BYTES``), so verification does not decode them again.
    """
    have = cache.load(images["sha256"])
    todo = images[~images["sha256"].isin(set(have["sha256"]))]
    budget = KEEP_BYTES // max(1, opts.work_size * opts.work_size)
    rows: list[dict] = []
    with ThreadPoolExecutor(max_workers=max(1, opts.workers)) as pool:
        rows = list(
            pool.map(
                lambda r: _hash_one(r[1], r[2], opts, keep if keep is not None and r[0] < budget else None),
                zip(range(len(todo)), todo["path"], todo["sha256"], strict=True),
            )
        )
    done = pd.DataFrame(rows, columns=HASH_SCHEMA.names)
    cache.add(done[done["error"].isna()])  # a read error may be temporary: not cached
    return pd.concat([p for p in (have, done) if len(p)] or [have], ignore_index=True), len(todo)


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def verification_order(cand: np.ndarray, bits: np.ndarray, n: int) -> np.ndarray:
    """The order candidate pairs are verified in: one connected component of the candidate graph
    after another (by its first photo), likeliest pairs first (fewest hash bits) within each.

    The groups do not depend on the order (a pair is skipped only when its photos are already
    joined, so the groups are the components of all passing pairs), and pairs of different
    components never interact; per component, the photos whose working copies verification
    needs at once are that component's, not the whole library's.
    """
    if not len(cand):
        return np.zeros(0, np.int64)
    uf = _UnionFind(n)
    for i, j in cand.tolist():
        uf.union(i, j)
    root = np.fromiter((uf.find(i) for i in range(n)), np.int64, n)
    first = np.full(n, n, np.int64)
    np.minimum.at(first, root, np.arange(n))
    return np.lexsort((np.arange(len(cand)), bits, first[root[cand[:, 0]]]))


def face_distance_for(faces: pd.DataFrame, opts: DedupOptions) -> float:
    if opts.face_distance is not None:
        return opts.face_distance
    ids = faces["model_id"].dropna().unique() if len(faces) else []
    if not len(ids):
        return 0.0
    return thresholds.for_model(ids[0]).match / 2.0


def find_duplicates(
    listing: pd.DataFrame, faces: pd.DataFrame | None, cache_dir: Path, opts: DedupOptions
) -> tuple[dict, DedupStats]:
    """The duplicates document (see module doc) for a listing and its face table."""
    t0 = time.monotonic()
    readable = listing[listing["sha256"].notna() & listing["error"].isna()].sort_values("path").reset_index(drop=True)
    stats = DedupStats(images=len(readable))
    byte_groups = [
        {"sha256": r.sha256, "paths": [r.path, *sorted(r.aliases)]}
        for r in readable.itertuples(index=False)
        if r.aliases is not None and len(r.aliases)
    ]
    stats.byte_identical_groups = len(byte_groups)
    cache = SegmentCache(Path(cache_dir) / f"phash-v{HASH_VERSION}", HASH_SCHEMA, "sha256")
    copies: dict[str, np.ndarray] = {}
    hashes, stats.hashed = image_hashes(readable[["sha256", "path"]], cache, opts, copies)
    hashes = readable[["sha256"]].merge(hashes, on="sha256", how="left")
    usable = hashes["error"].isna().to_numpy()
    index = {sha: i for i, sha in enumerate(readable["sha256"])}
    ok_rows = np.flatnonzero(usable)  # unreadable photos take no photo's neighbour places
    pairs = {
        (int(ok_rows[i]), int(ok_rows[j]))
        for i, j in phash_pairs(hashes["phash"].to_numpy(np.int64)[ok_rows], opts.phash_distance, opts.neighbours)
    }
    face_dist = 0.0
    if faces is not None and len(faces):
        face_dist = face_distance_for(faces, opts)
        usable_index = {sha: i for sha, i in index.items() if usable[i]}
        pairs |= face_pairs(faces, usable_index, face_dist, opts.neighbours)
    stats.candidates = len(pairs)
    failures: list[PairFailure] = []
    phashes = hashes["phash"].to_numpy(np.int64)
    cand = np.array(sorted(pairs), np.int64).reshape(-1, 2)
    bits = hamming(phashes[cand[:, 0]], phashes[cand[:, 1]]) if len(cand) else np.zeros(0, np.int64)
    ordered = [(int(i), int(j)) for i, j in cand[verification_order(cand, bits, len(readable))]]
    vcache = SegmentCache(Path(cache_dir) / f"verdict-v{VERDICT_VERSION}", VERDICT_SCHEMA, "pair")
    vstats = VerifyStats()
    shas = readable["sha256"].tolist()
    needed = {i for p in ordered for i in p}
    preloaded = {i: copies[shas[i]] for i in needed if shas[i] in copies}
    copies.clear()
    verified = verify_pairs(ordered, readable["path"].tolist(), opts, failures, shas, vcache, vstats, preloaded)
    preloaded.clear()
    stats.verified = len(verified)
    stats.failed_pairs = len(failures)
    stats.cached, stats.skipped, stats.checked = vstats.cached, vstats.skipped, vstats.checked
    stats.evicted = vstats.evicted
    uf = _UnionFind(len(readable))
    for i, j in verified:
        uf.union(i, j)
    members: dict[int, list[int]] = {}
    for i in range(len(readable)):
        members.setdefault(uf.find(i), []).append(i)
    groups = sorted((sorted(m) for m in members.values() if len(m) > 1), key=lambda m: m[0])
    near = [
        {
            "group": f"nd_{k:04d}",
            "members": [{"sha256": readable.at[i, "sha256"], "path": readable.at[i, "path"]} for i in g],
        }
        for k, g in enumerate(groups, start=1)
    ]
    stats.near_duplicate_groups = len(near)
    stats.near_duplicate_images = sum(len(g) for g in groups)
    stats.seconds = round(time.monotonic() - t0, 3)
    method = {**asdict(opts), "face_distance": face_dist, "hash": f"dct64-v{HASH_VERSION}", "grid": GRID}
    method.pop("workers")
    doc = {
        "version": VERSION,
        "method": method,
        "stats": asdict(stats),
        "byte_identical": byte_groups,
        "near_duplicate": near,
        "failed_pairs": [{"paths": list(f.paths), "error": f.error} for f in failures],
    }
    return doc, stats


@dataclass(frozen=True)
class PairFailure:
    """A candidate pair whose verification raised: reported by file names and skipped."""

    paths: tuple[str, str]
    error: str


VERDICT_VERSION = 4  # bump when verification changes in a way the settings do not show (4: luma decode)
VERDICT_SCHEMA = pa.schema(
    [
        ("pair", pa.string()),
        ("ok", pa.bool_()),
        ("how", pa.string()),
        ("inliers", pa.int64()),
        ("overlap", pa.float64()),
        ("ncc", pa.float64()),
        ("cell_ncc", pa.float64()),
    ]
)
VERDICT_FLUSH = 256  # new verdicts per cache segment (a crash loses at most these)


def verdict_settings(opts: DedupOptions) -> str:
    """A short digest of everything a pair's verdict depends on besides the two photos' bytes."""
    keys = ("work_size", "min_inliers", "min_overlap", "crops", "min_ncc", "min_cell_ncc", "max_pixels")
    facts = {k: getattr(opts, k) for k in keys} | {
        "grid": GRID,
        "trim": TRIM_TOLERANCE,
        "cell_rms": CELL_RMS_SCALE,
        "orb": _ORB_FEATURES,
        "orb_min_side": _ORB_MIN_SIDE,
        "version": VERDICT_VERSION,
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def pair_key(sha_a: str, sha_b: str, settings: str) -> str:
    """Cache key of the verdict for ``b`` verified against ``a`` (ordered: a is the reference)."""
    return f"{sha_a}:{sha_b}:{settings}"


@dataclass
class VerifyStats:
    cached: int = 0  # verdicts taken from the cache
    skipped: int = 0  # pairs whose photos were already in one group (transitively): never verified
    checked: int = 0  # pairs verified on pixels this run
    evicted: int = 0  # working copies dropped for memory while pairs still needed them


WORK_BYTES = 768 << 20  # working copies and ORB features kept during verification (least recently used beyond)


def _nbytes(x: np.ndarray | tuple | None) -> int:
    if x is None:
        return 0
    if isinstance(x, tuple):
        return sum(_nbytes(v) for v in x)
    return int(x.nbytes)


def _overlay_root(uf: _UnionFind, overlay: dict[int, int], x: int) -> int:
    r = uf.find(x)
    while r in overlay:
        r = overlay[r]
    return r


def verify_pairs(
    pairs: Sequence[tuple[int, int]],
    paths: Sequence[str],
    opts: DedupOptions,
    failures: list[PairFailure] | None = None,
    shas: Sequence[str] | None = None,
    cache: SegmentCache | None = None,
    vstats: VerifyStats | None = None,
    preloaded: dict[int, np.ndarray] | None = None,
    work_bytes: int | None = None,
) -> list[tuple[int, int]]:
    """The candidate pairs that pass verification, in the order given (most likely first).

    Incremental (with ``shas`` and a verdict ``cache``): a pair's verdict is a fact about the
    two photos' bytes and the settings, so it is cached under both sha256s and the settings
    digest, and a rerun verifies only new pairs. Pairs whose photos are already joined
    (transitively, by verified or cached pairs) are skipped: they cannot change the groups,
    which are the connected components of the verified pairs; a group of k copies costs about
    k - 1 verifications instead of k(k-1)/2. Work goes to the thread pool in small batches
    (two pairs per worker) that never hold two pairs the first could make redundant, so the
    skip sees the verdicts of earlier batches.

    Each photo is decoded once (its working copy and ORB features are kept while pairs still
    need them). One bad photo or pair never stops the stage: a photo that cannot be decoded
    fails its pairs; a pair whose verification raises is logged with both file names, appended
    to ``failures``, counted as not verified and not cached (it is retried next run).
    """
    vstats = vstats if vstats is not None else VerifyStats()
    work_bytes = WORK_BYTES if work_bytes is None else work_bytes
    settings = verdict_settings(opts)
    keys = [pair_key(shas[i], shas[j], settings) for i, j in pairs] if shas is not None else None
    known: dict[str, bool] = {}
    if cache is not None and keys is not None:
        got = cache.load(keys)
        known = dict(zip(got["pair"], got["ok"].astype(bool), strict=True))
    cv2.setNumThreads(1)
    n = max((max(p) for p in pairs), default=-1) + 1
    uf = _UnionFind(n)
    ok: list[tuple[int, int]] = []
    todo: list[int] = []
    for k, (i, j) in enumerate(pairs):
        if keys is not None and keys[k] in known:
            vstats.cached += 1
            if known[keys[k]]:
                ok.append((i, j))
                uf.union(i, j)
        else:
            todo.append(k)
    pending = np.bincount(np.asarray([x for k in todo for x in pairs[k]], np.int64), minlength=n)
    # Working copies (``load_work_copy``) and ORB features of photos with pairs still to verify,
    # least recently used first; beyond ``work_bytes`` the oldest are dropped (decoded again if
    # needed), so memory stays bounded whatever the library's size.
    grey: collections.OrderedDict[int, np.ndarray | None] = collections.OrderedDict(preloaded or {})
    feats: dict[int, OrbFeatures] = {}
    held = [sum(_nbytes(g) for g in grey.values())]
    load_errors: dict[int, str] = {}
    lock = threading.Lock()

    def evict() -> None:  # with the lock held
        while held[0] > work_bytes and len(grey) > 1:
            i, img = grey.popitem(last=False)
            held[0] -= _nbytes(img) + _nbytes(feats.pop(i, None))
            vstats.evicted += 1

    def working_copy(i: int) -> np.ndarray | None:
        with lock:
            if i in grey:
                grey.move_to_end(i)
                return grey[i]
        try:
            img = load_work_copy(paths[i], opts)
        except imageio.ImageLoadError:
            img = None
        except Exception as exc:  # noqa: BLE001 - one odd photo must not stop dedup
            load_errors[i] = f"{type(exc).__name__}: {exc}"
            log.warning("dedup: cannot prepare %s: %s", paths[i], load_errors[i])
            img = None
        with lock:
            if i not in grey:
                grey[i] = img
                held[0] += _nbytes(img)
                evict()
            return grey.get(i, img)

    def features_of(i: int, img: np.ndarray) -> OrbFeatures:
        with lock:
            if i in feats:
                return feats[i]
        f = orb_features(img)
        with lock:
            if i in feats:
                return feats[i]
            if i in grey:  # kept only beside its working copy (dropped with it)
                feats[i] = f
                held[0] += _nbytes(f)
                evict()
            return f

    def check(p: tuple[int, int]) -> Match | PairFailure:
        a, b = working_copy(p[0]), working_copy(p[1])
        if a is None or b is None:
            bad = [load_errors[i] for i in p if i in load_errors]
            return PairFailure((paths[p[0]], paths[p[1]]), bad[0]) if bad else Match(False, "-")
        try:
            m = verify_pair(a, b, opts, lambda: (features_of(p[0], a), features_of(p[1], b)))
        except Exception as exc:  # noqa: BLE001 - one bad pair must not stop dedup
            log.warning("dedup: skipped %s ~ %s: %s: %s", paths[p[0]], paths[p[1]], type(exc).__name__, exc)
            return PairFailure((paths[p[0]], paths[p[1]]), f"{type(exc).__name__}: {exc}")
        log.debug("dedup: %s ~ %s: %s", paths[p[0]], paths[p[1]], m)
        return m

    def release(p: tuple[int, int]) -> None:
        for i in p:
            pending[i] -= 1
            if pending[i] == 0:
                with lock:
                    if i in grey:
                        held[0] -= _nbytes(grey.pop(i)) + _nbytes(feats.pop(i, None))

    rows: list[dict] = []

    def flush(final: bool = False) -> None:
        if cache is not None and rows and (final or len(rows) >= VERDICT_FLUSH):
            cache.add(pd.DataFrame(rows, columns=VERDICT_SCHEMA.names))
            rows.clear()

    workers = max(1, opts.workers)
    batch_size = 2 * workers
    queue = collections.deque(todo)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        while queue:
            # A batch never holds two pairs that would join the same two groups if the first
            # passed (an overlay union-find over this batch): those wait for its verdicts.
            batch: list[int] = []
            hold: list[int] = []
            overlay: dict[int, int] = {}

            scanned = 0
            while queue and len(batch) < batch_size and scanned < 64 * batch_size:
                k = queue.popleft()
                scanned += 1
                i, j = pairs[k]
                if uf.find(i) == uf.find(j):
                    vstats.skipped += 1
                    release((i, j))
                    continue
                ri, rj = _overlay_root(uf, overlay, i), _overlay_root(uf, overlay, j)
                if ri == rj:
                    hold.append(k)
                    continue
                overlay[max(ri, rj)] = min(ri, rj)
                batch.append(k)
            queue.extendleft(reversed(hold))
            for k, m in zip(batch, pool.map(lambda k: check(pairs[k]), batch), strict=True):
                p = pairs[k]
                release(p)
                if isinstance(m, PairFailure):
                    if failures is not None:
                        failures.append(m)
                    continue
                vstats.checked += 1
                if m.how != "-" and keys is not None:
                    rows.append({"pair": keys[k], **asdict(m)})
                if m.ok:
                    ok.append(p)
                    uf.union(*p)
            flush()
    flush(final=True)
    return ok


def run_dedup(
    faces_path: Path, out: Path, cache_dir: Path, opts: DedupOptions, listing_path: Path | None = None
) -> DedupStats:
    """``facesets dedup CACHE``: duplicates.json for a face table and its source's listing.

    The listing defaults to ``listing.parquet`` beside the face table; without one, the image
    records (``faces.images.parquet``) stand in (they carry sha256, path and aliases).
    """
    from facesets.embed import sidecar_paths

    faces_path = Path(faces_path)
    listing_path = Path(listing_path) if listing_path else faces_path.with_name("listing.parquet")
    if listing_path.exists():
        listing = schema.read_table(listing_path)
    else:
        images_path = sidecar_paths(faces_path)[0]
        if not images_path.exists():
            raise ValueError(f"{listing_path}: no listing (and no image records at {images_path})")
        listing = schema.read_table(images_path)
    if "error" not in listing.columns:
        listing["error"] = None
    if "status" in listing.columns:  # image records: errors are status rows
        listing.loc[listing["status"] == "error", "error"] = listing["error"].fillna("error")
    faces = schema.read_table(faces_path, ["sha256", "embedding", "model_id"]) if faces_path.exists() else None
    doc, stats = find_duplicates(listing, faces, cache_dir, opts)
    write_json(out, doc)
    log.info("dedup: %s", asdict(stats))
    return stats


def image_groups(duplicates_json_path: str | Path) -> dict[str, str]:
    """sha256 -> near-duplicate group id, for every image in a near-duplicate group.

    Images in no group are absent (treat ``groups.get(sha, sha)`` as the photo's own group).
    Byte-identical copies share one sha256 already, so they need no entry.
    """
    with open(duplicates_json_path, encoding="utf-8") as fh:
        doc = json.load(fh)
    return {m["sha256"]: g["group"] for g in doc.get("near_duplicate", []) for m in g["members"]}


def groups_of(doc: dict) -> list[set[str]]:
    """The near-duplicate groups of a duplicates document as sets of paths (for tests/tools)."""
    return [{m["path"] for m in g["members"]} for g in doc["near_duplicate"]]
