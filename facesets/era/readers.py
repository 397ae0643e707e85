"""The inputs of an era split: the sources' face and quality tables, and EXIF years (cached by sha256)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from facesets.segcache import SegmentCache
from facesets.tables import one_model, read_face_tables, read_quality_tables

log = logging.getLogger("facesets.era")


YEAR_CACHE_SCHEMA = pa.schema([("sha256", pa.string()), ("exif_year", pa.int16())])


_FACE_COLUMNS = ("face_key", "sha256", "source", "path", "x1", "y1", "x2", "y2", "det_score", "embedding", "model_id")


def load_faces(paths: Sequence[str | os.PathLike[str]]) -> pd.DataFrame:
    """The face tables of the sources, one row per face key (facesets.tables.read_face_tables)."""
    if not paths:
        raise ValueError("era split: no face tables given (--faces)")
    return read_face_tables(paths, _FACE_COLUMNS)


def load_quality(paths: Sequence[str | os.PathLike[str]]) -> pd.DataFrame | None:
    """Quality tables of enrich, concatenated, indexed by face key; None if none."""
    return read_quality_tables(paths)


def read_exif_year(path: str | os.PathLike[str]) -> int | None:
    """The photo's EXIF capture year (enrich's reader: piexif, HEIC through pillow-heif); None if absent.

    Raises OSError when the file cannot be opened, so that the answer is not cached.
    """
    from facesets.enrich import read_exif_year as exif_year

    with open(path, "rb"):
        pass  # enrich's reader says None for a missing file; here that must not be cached
    return exif_year(os.fspath(path))


@dataclass
class YearCache:
    """sha256 -> EXIF year (None = the photo has none), cached under ``root``.

    An append-only cache of immutable Parquet segments (facesets/segcache.py, as enrich's): a
    run that learned something adds one uniquely named segment atomically, so concurrent splits
    never lose each other's entries, and a re-run reads no photo.
    """

    root: Path
    years: dict[str, int | None] = field(default_factory=dict)
    new: dict[str, int | None] = field(default_factory=dict)

    def _segments(self) -> SegmentCache:
        return SegmentCache(self.root, YEAR_CACHE_SCHEMA, "sha256")

    def preload(self, sha256s: Sequence[str]) -> None:
        """Read the cached years of these photos (one pass over the segments)."""
        want = [s for s in set(sha256s) if s not in self.years]
        if not want:
            return
        df = self._segments().load(want)
        for sha, y in zip(df["sha256"], df["exif_year"], strict=True):
            self.years[sha] = None if pd.isna(y) else int(y)

    def lookup(self, sha256: str, path: str) -> int | None:
        if sha256 not in self.years:
            self.preload([sha256])
        if sha256 in self.years:
            return self.years[sha256]
        try:
            year = read_exif_year(path)
        except OSError as exc:
            log.warning("era: cannot read EXIF of %s: %s", path, exc)
            return None
        self.years[sha256] = self.new[sha256] = year
        return year

    def save(self) -> None:
        keys = sorted(self.new)
        rows = pd.DataFrame({"sha256": keys, "exif_year": pd.array([self.new[k] for k in keys], dtype="Int16")})
        self._segments().add(rows)
        self.new = {}


def resolve_years(
    faces: pd.DataFrame, quality: pd.DataFrame | None, cache: YearCache | None
) -> tuple[np.ndarray, dict[str, int]]:
    """Per face row, its photo's EXIF year (float, NaN when unknown), and where the years came from.

    The quality table's ``exif_year`` wins (enrich read it; null there means the photo has none);
    the other photos are looked up in the cache and, when missing there, read from the file.
    """
    out = np.full(len(faces), np.nan)
    origin = {"quality": 0, "cache": 0, "exif_read": 0, "unknown": 0}
    keys, shas, paths = (faces[c].to_numpy() for c in ("face_key", "sha256", "path"))
    in_q = np.zeros(len(faces), bool)
    if quality is not None and "exif_year" in quality.columns and len(faces):
        in_q = quality.index.get_indexer(keys) >= 0  # the index is unique (load_quality)
        vals = quality["exif_year"].reindex(keys).to_numpy(np.float64, na_value=np.nan)
        out[in_q] = vals[in_q]
        origin["quality"] = int(in_q.sum())
    if cache is not None and (~in_q).any():
        cache.preload(shas[~in_q].tolist())
        for i in np.flatnonzero(~in_q):
            known = shas[i] in cache.years
            y = cache.lookup(shas[i], paths[i])
            origin["cache" if known else "exif_read"] += 1
            if y is not None:
                out[i] = y
    origin["unknown"] = int(np.isnan(out).sum())
    return out, origin


def model_of(faces: pd.DataFrame, where: Sequence[str]) -> str:
    """The embedding model of the face tables (``load_faces`` checked there is one)."""
    model = one_model(faces, where)
    if not model:
        raise ValueError(f"face tables {', '.join(map(str, where))}: no faces, so no embedding model to split with")
    return model
