"""A small append-only cache of immutable Parquet segments keyed by one string column.

The same design as the face store (facesets/store.py), for the stages that derive
per-face or per-image facts which never change for the same key (enrich: ``face_key``;
dedup: ``sha256``): segments are written atomically under unique names, several writers
never collide, a crash loses at most the segment being written, a damaged segment is
skipped (its rows are recomputed) and deleting the folder only costs time. On repeats,
the first segment by name wins.
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
import pyarrow.compute as pc
import pyarrow.parquet as pq

from facesets import schema
from facesets.atomic import TMP_PREFIX

log = logging.getLogger(__name__)


class SegmentCache:
    def __init__(self, folder: Path, table_schema: pa.Schema, key: str) -> None:
        self.dir = Path(folder)
        self.schema = table_schema
        self.key = key

    def segments(self) -> list[Path]:
        if not self.dir.exists():
            return []
        return sorted(p for p in self.dir.glob("seg-*.parquet") if not p.name.startswith(TMP_PREFIX))

    def _read(self, path: Path, columns: list[str] | None = None) -> pa.Table | None:
        try:
            return pq.read_table(path, columns=columns)
        except Exception as exc:  # noqa: BLE001 - a damaged segment is skipped, its rows redone
            log.warning("cache: ignoring unreadable segment %s (%s)", path, exc)
            return None

    def keys(self) -> set[str]:
        out: set[str] = set()
        for seg in self.segments():
            t = self._read(seg, [self.key])
            if t is not None:
                out.update(t.column(self.key).to_pylist())
        return out

    def new_keys(self, seen: set[str]) -> set[str]:
        """Keys of the segments whose names are not in ``seen`` (which gets them): an incremental
        ``keys()`` for a writer that watches other writers' segments appear."""
        out: set[str] = set()
        for seg in self.segments():
            if seg.name in seen:
                continue
            t = self._read(seg, [self.key])
            if t is not None:
                out.update(t.column(self.key).to_pylist())
                seen.add(seg.name)
        return out

    def load(self, keys: Iterable[str]) -> pd.DataFrame:
        """The cached rows for ``keys`` (first segment by name wins on repeats)."""
        wanted = pa.array(sorted(set(keys)), pa.string())
        parts = []
        for seg in self.segments():
            t = self._read(seg)
            if t is None or self.key not in t.column_names:
                continue
            t = t.filter(pc.is_in(t.column(self.key), value_set=wanted))
            if t.num_rows:
                parts.append(t.cast(self.schema) if t.schema != self.schema else t)
        if not parts:
            return self.schema.empty_table().to_pandas()
        df = pa.concat_tables(parts).to_pandas()
        return df.drop_duplicates(self.key, keep="first").reset_index(drop=True)

    def add(self, rows: pd.DataFrame) -> Path | None:
        """Write one immutable segment atomically (nothing for no rows)."""
        if not len(rows):
            return None
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"seg-{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}.parquet"
        schema.write_table(rows, self.schema, path)
        return path
