"""The face store: a content-addressed, append-only cache of analyzer results.

Layout: ``<store_root>/<model_id>/seg-<time>-<pid>-<rand>.parquet``. Each segment holds
the rows (schema.STORE) of a batch of images, keyed by sha256; a noface or unreadable
image is one row with ``face_index = -1``. Segments are immutable and uniquely named, so
any number of writers (shards, cluster jobs on a network filesystem) can add to the
store at once, and a crash loses at most the batch being written (writes are atomic).
Deleting the store only costs time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa

from facesets import schema
from facesets.segcache import SegmentCache

log = logging.getLogger(__name__)


class FaceStore(SegmentCache):
    """The segment cache (facesets/segcache.py) of ``schema.STORE`` rows under one model id.

    Unlike the other caches a key (sha256) has several rows, one per face: ``load`` keeps
    all rows of an image from the first segment that has it.
    """

    def __init__(self, root: Path, model_id: str) -> None:
        super().__init__(Path(root) / model_id, schema.STORE, "sha256")
        self.model_id = model_id

    def done(self) -> set[str]:
        """sha256 of every image the store has a result for."""
        return self.keys()

    def load(self, shas: Iterable[str]) -> pd.DataFrame:
        """All rows for the given images; the first segment (by name) wins on repeats."""
        wanted = pa.array(sorted(set(shas)), pa.string())
        parts = []
        for seg in self.segments():
            t = self._read(seg)
            if t is None:
                continue
            t = t.filter(pa.compute.is_in(t.column("sha256"), value_set=wanted))
            if t.num_rows:
                df = t.to_pandas()
                df["_seg"] = seg.name
                parts.append(df)
        if not parts:
            return pd.DataFrame({n: pd.Series(dtype=object) for n in schema.STORE.names})
        df = pd.concat(parts, ignore_index=True)
        first = df.groupby("sha256")["_seg"].transform("min")
        return df[df["_seg"] == first].drop(columns="_seg").reset_index(drop=True)

    def compact(self) -> Path | None:
        """Merge all segments into one (safe while no writer runs)."""
        segs = self.segments()
        if len(segs) < 2:
            return None
        tables = [t for t in (self._read(s) for s in segs) if t is not None]
        df = pa.concat_tables(tables).to_pandas().drop_duplicates(["sha256", "face_index"], keep="first")
        new = self.add(df)
        for s in segs:
            s.unlink()
        return new
