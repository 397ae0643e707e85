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
import os
import secrets
import time
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from facesets import schema
from facesets.atomic import TMP_PREFIX

log = logging.getLogger(__name__)


class FaceStore:
    def __init__(self, root: Path, model_id: str) -> None:
        self.dir = Path(root) / model_id
        self.model_id = model_id

    def segments(self) -> list[Path]:
        if not self.dir.exists():
            return []
        return sorted(p for p in self.dir.glob("seg-*.parquet") if not p.name.startswith(TMP_PREFIX))

    def _read(self, path: Path, columns: list[str] | None = None) -> pa.Table | None:
        try:
            return pq.read_table(path, columns=columns)
        except Exception as exc:  # noqa: BLE001 - a damaged segment is skipped, its images redone
            log.warning("face store: ignoring unreadable segment %s (%s)", path, exc)
            return None

    def done(self) -> set[str]:
        """sha256 of every image the store has a result for."""
        out: set[str] = set()
        for seg in self.segments():
            t = self._read(seg, ["sha256"])
            if t is not None:
                out.update(t.column("sha256").to_pylist())
        return out

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

    def add(self, rows: pd.DataFrame) -> Path:
        """Write one immutable segment atomically."""
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"seg-{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}.parquet"
        path = self.dir / name
        schema.write_table(rows, schema.STORE, path)
        return path

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
