"""Near-duplicate faces inside one library identity, across sources.

``dedup`` groups the photos of one source; the library gathers faces from many, so the same
frame (another size, a recompression, a composite made of it) can reach one identity from
two sources. manifest-merge therefore compares the *crops* of an identity's faces: a crop of
the same frame is the same picture (the face, its padding, its surroundings) whatever the
photo's resolution, while another photo of the same person is not.

Candidates are cheap: the crops' 64-bit DCT hashes (``dedup.phash`` of a grey copy) within
``phash_distance`` bits, or the faces' embeddings within ``face_distance``. Each candidate is
verified on pixels with dedup's own test (``dedup.verify_pair``: aligned, normalised cross-
correlation over the overlap and over the worst cell of an 8x8 grid), so a different photo
taken a moment later is not a duplicate. Pure functions over arrays; the caller reads the files.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from facesets.dedup import DedupOptions, phash, trim_borders, verify_pair

WORK_SIZE = 256  # long side of the grey working copies (ORB needs this much to align a shifted crop)


@dataclass(frozen=True)
class Face:
    key: str
    phash: int | None  # None: the crop could not be read
    embedding: np.ndarray | None = None


def load_crop(path: str) -> np.ndarray | None:
    """A crop in grey, its black padding (outside the photo) trimmed, long side ``WORK_SIZE``; None if unreadable.

    The padding must go: the same face cropped from a composite and from the single photo
    sits at another place in the square, and black bars would decide the comparison.
    """
    grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if grey is None:
        return None
    grey = trim_borders(grey)
    h, w = grey.shape
    f = WORK_SIZE / max(h, w)
    dsize = (max(1, round(w * f)), max(1, round(h * f)))
    return cv2.resize(grey, dsize, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)


def hash_hex(value: int) -> str:
    return f"{value & (2**64 - 1):016x}"


def hash_int(text: str) -> int:
    v = int(text, 16)
    return v - (1 << 64) if v >= (1 << 63) else v


def crop_hash(grey: np.ndarray) -> int:
    return phash(grey)


def _bits(a: int, b: int) -> int:
    return int((a ^ b) & (2**64 - 1)).bit_count()


def is_candidate(a: Face, b: Face, opts: DedupOptions, face_distance: float) -> bool:
    if a.phash is not None and b.phash is not None and _bits(a.phash, b.phash) <= opts.phash_distance:
        return True
    if a.embedding is not None and b.embedding is not None:
        return float(1.0 - a.embedding @ b.embedding) <= face_distance
    return False


def duplicates_of(
    new: Sequence[Face],
    kept: Sequence[Face],
    pixels: Callable[[str], np.ndarray | None],
    opts: DedupOptions,
    face_distance: float,
) -> dict[str, str]:
    """new key -> the key of the face it duplicates (a kept one, or an earlier new one).

    ``new`` is taken in order (best first): a face that duplicates none is kept and the
    later new faces are compared with it too, so one face per near-duplicate group stays.
    """
    out: dict[str, str] = {}
    pool = list(kept)
    for f in new:
        hit = None
        for k in pool:
            if not is_candidate(f, k, opts, face_distance):
                continue
            a, b = pixels(k.key), pixels(f.key)
            if a is not None and b is not None and verify_pair(a, b, opts).ok:
                hit = k.key
                break
        if hit is None:
            pool.append(f)
        else:
            out[f.key] = hit
    return out


def face_of(key: str, phash_hex: str | None, embeddings: Mapping[str, np.ndarray]) -> Face:
    return Face(key, hash_int(phash_hex) if phash_hex else None, embeddings.get(key))
