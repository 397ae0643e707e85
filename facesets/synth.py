"""Synthetic face tables with ground truth, for tests and the clustering benchmarks.

``synthetic_faces(n)`` returns ``n`` L2-normalised embeddings with the identity of each face
and the photo it came from, shaped like a real photo library under cosine distance (the
geometry is tuned for a clustering threshold around 0.55):

* **Identity sizes** (``skew="zipf"``, the default; ``uniform`` and ``family`` in
  ``identity_sizes``) follow Zipf's law: a few identities hold thousands of faces (at 1e6
  faces), most hold a handful, and about half of all identities are singletons. Sizes are
  drawn i.i.d. from the discrete power law ``P(s) ∝ s^-(1 + 1/zipf_a)`` on
  ``1 .. max_identity_frac * n``, which is the size distribution of a rank-size Zipf law
  ``size(rank) ∝ rank^-zipf_a``. Identity ids are numbered by size, largest first.
* **Sub-modes** per identity (ages, glasses, beard...): identities with more faces get more
  modes (up to ``modes_max``), mode centres ``mode_dist`` apart (cosine distance), the first
  mode the most frequent.
* **Faces** scatter around their mode: a good face sits ``good_dist`` from its mode centre,
  so two faces of one person are typically 0.25-0.5 apart. A fraction ``low_quality_frac``
  (blur, profile, tiny) sits ``low_quality_dist`` from the mode, up to ~0.7 from the identity.
* **Look-alikes**: a fraction ``lookalike_frac`` of the multi-face identities come in pairs
  whose faces are on average ``lookalike_dist`` apart (straddling the threshold), and that
  often appear in the same photos (``lookalike_cooccur``), like relatives.
* **Noise faces** (false detections, unrelated strangers): a fraction ``noise_frac`` of random
  faces, each its own identity (ids after the real identities).
* **Unrelated identities** are random directions plus a shared offset (``bias``), so two
  faces of different people are ~0.8-1.0 apart, as with real face embeddings (128-d). With
  very many identities some unrelated pairs fall under the threshold by chance, as in real
  libraries.
* **Photos** hold 1-6 faces (``photo_sizes``: probability of 1, 2, ... faces), always of
  different identities (a person appears once per photo): the cannot-link constraint the
  clusterer enforces is true of the ground truth.

Distances quoted above are cosine distances ``1 - a·b`` after the final normalisation; they
are targets of the construction, ``pair_distance_percentiles`` measures the real ones.
Everything is vectorised NumPy in float32, processed in chunks: 1e6 faces x 128 dims take a
few seconds and ~1.5 GB. The same arguments always give the same table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CHUNK = 1 << 16


@dataclass(frozen=True)
class SynthFaces:
    keys: np.ndarray  # (n,) str, unique face keys "p<photo>-<slot>"; rows are sorted by key
    emb: np.ndarray  # (n, dim) float32, L2-normalised
    identity: np.ndarray  # (n,) int64 ground truth; every noise face has an id of its own
    photo: np.ndarray  # (n,) int64 photo id; the faces of one photo are different identities
    low_quality: np.ndarray  # (n,) bool, the face was drawn far from its mode
    noise: np.ndarray  # (n,) bool, a noise face (its own identity)
    mode: np.ndarray  # (n,) int64 sub-mode of the face within its identity (-1 for noise)
    twin: np.ndarray  # (n_identities,) int64 the look-alike partner identity, or -1

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def n_identities(self) -> int:
        return len(self.twin)


def _unit(x: np.ndarray) -> np.ndarray:
    x /= np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return x


def _around(rng: np.random.Generator, centre: np.ndarray, cos: np.ndarray) -> np.ndarray:
    """Unit vectors at cosine ``cos`` from the unit vectors ``centre`` (random direction)."""
    z = rng.standard_normal(centre.shape, dtype=np.float32)
    z -= np.einsum("ij,ij->i", z, centre)[:, None] * centre
    _unit(z)
    cos = np.asarray(cos, np.float32)[:, None]
    return _unit(cos * centre + np.sqrt(np.maximum(1.0 - cos * cos, 0.0)) * z)


def _zipf_sizes(rng: np.random.Generator, total: int, zipf_a: float, cap: int) -> np.ndarray:
    """I.i.d. power-law sizes on 1..cap summing exactly to ``total``, largest first."""
    s = np.arange(1, cap + 1, dtype=np.float64)
    cdf = np.cumsum(s ** -(1.0 + 1.0 / zipf_a))
    cdf /= cdf[-1]
    mean = float((s * np.diff(np.r_[0.0, cdf])).sum())
    out: list[np.ndarray] = []
    have = 0
    while have < total:
        m = int((total - have) / mean * 1.2) + 16
        draw = np.searchsorted(cdf, rng.random(m), side="right").astype(np.int64) + 1
        out.append(draw)
        have += int(draw.sum())
    sizes = np.concatenate(out)
    csum = np.cumsum(sizes)
    last = int(np.searchsorted(csum, total))  # first index reaching the total
    sizes = sizes[: last + 1].copy()
    sizes[-1] -= int(csum[last]) - total
    sizes = sizes[sizes > 0]
    return np.sort(sizes)[::-1].copy()


SKEWS = ("zipf", "uniform", "family")


def identity_sizes(
    rng: np.random.Generator,
    total: int,
    skew: str,
    zipf_a: float,
    cap: int,
    giants: tuple[float, ...] = (),
    uniform_max: int = 40,
) -> np.ndarray:
    """Identity sizes summing to ``total``, largest first, for a size distribution ``skew``.

    * ``zipf``: i.i.d. power-law sizes on 1..``cap`` (``_zipf_sizes``).
    * ``uniform``: i.i.d. uniform sizes on 1..``uniform_max`` (no identity stands out).
    * ``family``: a family library: 2-5 identities (the owner, partner, children) holding
      10-25 % of the faces each (drawn from ``rng``), the rest Zipf as above.

    ``giants``: explicit shares of the faces held by single identities (e.g. ``(0.2, 0.2)``),
    taken before the rest is drawn by ``skew``; ``family`` draws them itself when none are given.
    """
    if skew not in SKEWS:
        raise ValueError(f"skew must be one of {', '.join(SKEWS)}, not {skew!r}")
    shares = list(giants)
    if skew == "family" and not shares:
        shares = rng.uniform(0.10, 0.25, int(rng.integers(2, 6)))
        shares = (shares * min(1.0, 0.8 / shares.sum())).tolist()  # at most 80 % in the family
    if sum(shares) >= 1.0:
        raise ValueError(f"giant identities hold {sum(shares):.0%} of the faces: must be < 100%")
    big = np.array([round(f * total) for f in shares if round(f * total) > 0], np.int64)
    rest = total - int(big.sum())
    if skew == "uniform":
        draw = rng.integers(1, uniform_max + 1, rest // max(1, (uniform_max + 1) // 2) + 16)
        csum = np.cumsum(draw)
        last = int(np.searchsorted(csum, rest))
        small = draw[: last + 1].copy()
        small[-1] -= int(csum[last]) - rest
        small = small[small > 0]
    else:
        small = _zipf_sizes(rng, rest, zipf_a, cap) if rest else np.zeros(0, np.int64)
    return np.sort(np.r_[big, small].astype(np.int64))[::-1].copy()


def synthetic_faces(
    n_faces: int,
    dim: int = 128,
    seed: int = 0,
    *,
    skew: str = "zipf",
    giants: tuple[float, ...] = (),
    zipf_a: float = 1.2,
    max_identity_frac: float = 0.02,
    noise_frac: float = 0.03,
    low_quality_frac: float = 0.10,
    modes_max: int = 4,
    mode_dist: tuple[float, float] = (0.20, 0.35),
    good_dist: tuple[float, float] = (0.12, 0.24),
    low_quality_dist: tuple[float, float] = (0.35, 0.60),
    lookalike_frac: float = 0.05,
    lookalike_dist: tuple[float, float] = (0.50, 0.65),
    lookalike_cooccur: float = 0.3,
    bias: float = 0.10,
    photo_sizes: tuple[float, ...] = (0.40, 0.25, 0.15, 0.10, 0.06, 0.04),
) -> SynthFaces:
    """A synthetic face table of ``n_faces`` faces (see the module docstring for the model).

    Knobs (cosine distances are after normalisation, approximate targets):

    * ``skew``: the identity-size distribution, ``zipf`` (default), ``uniform`` or ``family``
      (2-5 identities holding 10-25 % of the faces each); see ``identity_sizes``.
    * ``giants``: explicit shares of single identities, e.g. ``(0.2, 0.2)``: two people with
      20 % of all faces each (the owner and a child in a personal library).
    * ``zipf_a``: rank-size exponent of identity sizes (1.1-1.3 is typical).
    * ``max_identity_frac``: the largest possible identity, as a fraction of the faces
      (at least 50 faces).
    * ``noise_frac``: fraction of noise faces (random, each its own identity).
    * ``low_quality_frac``: fraction of real faces drawn ``low_quality_dist`` from their mode
      instead of ``good_dist``.
    * ``modes_max``, ``mode_dist``: sub-modes per identity and their pairwise distances.
    * ``lookalike_frac``, ``lookalike_dist``: fraction of the multi-face identities paired
      into look-alikes, and the mean face-to-face distance between the two of a pair.
    * ``lookalike_cooccur``: look-alikes are often relatives photographed together: this
      share of the smaller one's faces is moved into photos of the other (cannot-link bites).
    * ``bias``: squared length of the offset shared by all faces; unrelated faces end up
      ~``1 / (1 + bias)`` apart on average.
    * ``photo_sizes``: probabilities of a photo holding 1, 2, ... faces.
    """
    if n_faces < 0:
        raise ValueError("n_faces must be >= 0")
    rng = np.random.default_rng(seed)
    scale = 1.0 + bias  # distances before the shared offset is added, divided by scale after

    # ---- identities: sizes, sub-modes, centres
    n_noise = round(noise_frac * n_faces) if n_faces > 1 else 0
    n_real = n_faces - n_noise
    cap = max(50, int(max_identity_frac * n_real))
    if skew == "zipf" and not giants:  # the original draw, bit for bit
        sizes = _zipf_sizes(rng, n_real, zipf_a, cap) if n_real else np.zeros(0, np.int64)
    else:
        sizes = identity_sizes(rng, n_real, skew, zipf_a, cap, tuple(giants)) if n_real else np.zeros(0, np.int64)
    n_id = len(sizes)
    centres = _unit(rng.standard_normal((n_id, dim), dtype=np.float32))

    n_modes = np.floor(1 + np.log10(np.maximum(sizes, 1)) * rng.uniform(0.5, 1.5, n_id)).astype(np.int64)
    n_modes = np.clip(np.minimum(n_modes, sizes), 1, modes_max)
    # every mode sits half the mode distance from the centre, so two modes are ~mode_dist apart
    mode_cos = 1.0 - scale * rng.uniform(*mode_dist, (n_id, modes_max)) / 2.0
    mode_cos[n_modes == 1, 0] = 1.0
    weight = rng.uniform(0.15, 0.7, (n_id, modes_max))
    weight[:, 0] = 1.0
    weight[np.arange(modes_max)[None, :] >= n_modes[:, None]] = 0.0
    cumw = np.cumsum(weight, 1)
    cumw /= cumw[:, -1:]

    # ---- real faces: identity, mode, distance to the mode
    ident = np.repeat(np.arange(n_id, dtype=np.int64), sizes)
    mode = (rng.random(n_real)[:, None] > cumw[ident]).sum(1).astype(np.int64)
    mode = np.minimum(mode, n_modes[ident] - 1)
    low = rng.random(n_real) < low_quality_frac
    face_cos = np.where(
        low,
        1.0 - scale * rng.uniform(*low_quality_dist, n_real),
        1.0 - scale * rng.uniform(*good_dist, n_real),
    )
    face_cos = np.clip(face_cos, 0.0, 1.0)

    # ---- look-alike pairs: partner B's centre placed so faces of A and B are lookalike_dist apart
    twin = np.full(n_id, -1, np.int64)
    multi = np.flatnonzero(sizes >= 2)
    n_pairs = int(lookalike_frac * len(multi)) // 2
    if n_pairs:
        pick = rng.permutation(multi)[: 2 * n_pairs]
        a, b = pick[:n_pairs], pick[n_pairs:]
        twin[a], twin[b] = b, a
        # mean cosine of a face to its identity centre, per identity
        fc = face_cos * mode_cos[ident, mode]
        kappa = np.bincount(ident, weights=fc, minlength=n_id) / np.maximum(sizes, 1)
        target = 1.0 - scale * rng.uniform(*lookalike_dist, n_pairs)
        cos_ab = np.clip(target / np.maximum(kappa[a] * kappa[b], 1e-6), -1.0, 0.98)
        centres[b] = _around(rng, centres[a], cos_ab)

    modes = np.empty((n_id, modes_max, dim), np.float32)
    for k in range(modes_max):
        modes[:, k] = _around(rng, centres, mode_cos[:, k])
    del centres

    # ---- embeddings, chunk by chunk; noise faces last; then the shared offset
    offset = _unit(rng.standard_normal((1, dim), dtype=np.float32)) * np.float32(np.sqrt(bias))
    emb = np.empty((n_faces, dim), np.float32)
    for s in range(0, n_real, CHUNK):
        e = min(s + CHUNK, n_real)
        emb[s:e] = _around(rng, modes[ident[s:e], mode[s:e]], face_cos[s:e])
    del modes
    for s in range(n_real, n_faces, CHUNK):
        e = min(s + CHUNK, n_faces)
        emb[s:e] = _unit(rng.standard_normal((e - s, dim), dtype=np.float32))
    for s in range(0, n_faces, CHUNK):
        emb[s : s + CHUNK] += offset
        _unit(emb[s : s + CHUNK])

    identity = np.concatenate([ident, n_id + np.arange(n_noise, dtype=np.int64)])
    mode = np.concatenate([mode, np.full(n_noise, -1, np.int64)])
    low = np.concatenate([low, np.zeros(n_noise, bool)])
    noise = np.r_[np.zeros(n_real, bool), np.ones(n_noise, bool)]
    twin = np.r_[twin, np.full(n_noise, -1, np.int64)]

    # ---- photos: shuffled faces dealt into photos of 1..6, repeated identities moved out
    perm = rng.permutation(n_faces)
    p = np.asarray(photo_sizes, np.float64)
    per = rng.choice(np.arange(1, len(p) + 1), size=n_faces + 1, p=p / p.sum())
    per = per[: int(np.searchsorted(np.cumsum(per), n_faces)) + 1]
    photo_of_slot = np.repeat(np.arange(len(per), dtype=np.int64), per)[:n_faces]
    photo = np.empty(n_faces, np.int64)
    photo[perm] = photo_of_slot
    if n_pairs and lookalike_cooccur > 0:
        # look-alikes are often relatives: move some faces of B into photos of A (<= 6 faces)
        psize = np.bincount(photo)
        first = np.r_[0, np.cumsum(sizes)[:-1]]
        for ia, ib in zip(a.tolist(), b.tolist(), strict=True):
            fa = first[ia] + np.flatnonzero(psize[photo[first[ia] : first[ia] + sizes[ia]]] < len(photo_sizes))
            fb = first[ib] + np.arange(sizes[ib])
            m = int(lookalike_cooccur * min(len(fa), len(fb)))
            if m == 0:
                continue
            fa, fb = rng.choice(fa, m, replace=False), rng.choice(fb, m, replace=False)
            move = photo[fa] != photo[fb]
            fa, fb = fa[move], fb[move]
            np.add.at(psize, photo[fb], -1)
            np.add.at(psize, photo[fa], 1)
            photo[fb] = photo[fa]
    order = np.lexsort((identity, photo))
    dup = np.zeros(n_faces, bool)
    if n_faces > 1:
        same = (photo[order][1:] == photo[order][:-1]) & (identity[order][1:] == identity[order][:-1])
        dup[order[1:][same]] = True
    n_photos = len(per)
    photo[dup] = n_photos + np.arange(int(dup.sum()))
    # dense photo ids in a random order, then rows sorted by (photo, slot)
    _, photo = np.unique(photo, return_inverse=True)
    relabel = rng.permutation(int(photo.max()) + 1 if n_faces else 0)
    photo = relabel[photo].astype(np.int64)
    order = np.lexsort((rng.random(n_faces), photo))
    photo = photo[order]
    start = np.r_[True, photo[1:] != photo[:-1]] if n_faces else np.zeros(0, bool)
    first = np.maximum.accumulate(np.where(start, np.arange(n_faces), 0))
    slot = np.arange(n_faces) - first
    width = max(len(str(int(photo.max()))) if n_faces else 1, 7)
    keys = np.array([f"p{q:0{width}d}-{t}" for q, t in zip(photo.tolist(), slot.tolist(), strict=True)], dtype=str)
    emb = emb[order]
    return SynthFaces(
        keys=keys,
        emb=emb,
        identity=identity[order],
        photo=photo,
        low_quality=low[order],
        noise=noise[order],
        mode=mode[order],
        twin=twin,
    )


def pair_distance_percentiles(
    faces: SynthFaces, n_pairs: int = 200_000, seed: int = 1, q: tuple[float, ...] = (1, 5, 25, 50, 75, 95, 99)
) -> dict[str, dict[str, float]]:
    """Percentiles of cosine distances of random face pairs, by kind of pair.

    ``same``: two faces of one identity (uniform over faces, so large identities weigh more);
    ``same_good``: both good quality; ``different``: two faces of different identities;
    ``lookalike``: one face of each identity of a look-alike pair; ``noise_nn``: not sampled.
    """
    rng = np.random.default_rng(seed)
    ident, emb = faces.identity, faces.emb
    n = len(ident)
    out: dict[str, dict[str, float]] = {}

    def summ(i: np.ndarray, j: np.ndarray) -> dict[str, float]:
        if not len(i):
            return {}
        d = 1.0 - np.einsum("ij,ij->i", emb[i].astype(np.float64), emb[j].astype(np.float64))
        return {f"p{int(p)}": float(v) for p, v in zip(q, np.percentile(d, q), strict=True)} | {"n": len(i)}

    order = np.argsort(ident, kind="stable")
    sid = ident[order]
    starts = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]])
    size = np.diff(np.r_[starts, n])
    grp = np.repeat(np.arange(len(starts)), size)
    pos = np.arange(n) - starts[grp]
    cand = np.flatnonzero(size[grp] >= 2)
    if len(cand):
        a = rng.choice(cand, n_pairs)
        g = grp[a]
        b = starts[g] + (pos[a] + rng.integers(1, size[g])) % size[g]
        i, j = order[a], order[b]
        out["same"] = summ(i, j)
        good = ~faces.low_quality[i] & ~faces.low_quality[j]
        out["same_good"] = summ(i[good], j[good])
    i, j = rng.integers(0, n, n_pairs), rng.integers(0, n, n_pairs)
    keep = ident[i] != ident[j]
    out["different"] = summ(i[keep], j[keep])
    twins = np.flatnonzero(faces.twin >= 0)
    if len(twins):
        # faces whose identity has a twin; pair each with a random face of the twin
        has = np.flatnonzero(np.isin(ident, twins))
        a = rng.choice(has, n_pairs)
        t = faces.twin[ident[a]]
        tg = np.searchsorted(sid[starts], t)
        b = order[starts[tg] + rng.integers(0, size[tg])]
        out["lookalike"] = summ(a, b)
    return out
