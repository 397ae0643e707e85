"""Sharded embedding: split a listing into independent embed jobs, merge their tables.

A photo's shard is a function of its sha256 alone (``sha256 mod N``), so adding photos to a
library changes only the shards the new photos fall into, and the merged face table is the
same rows and values as a single job's (each photo's analysis never depends on its batch).
Unreadable files (no sha256) go to shard 0.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from facesets import schema
from facesets.atomic import write_json
from facesets.embed import EmbedStats, sidecar_paths
from facesets.listing import retry_path


def parse_shard(spec: str) -> tuple[int, int]:
    """``"2/8"`` -> (2, 8), checked."""
    try:
        i, n = (int(v) for v in spec.split("/"))
    except ValueError:
        raise ValueError(f"--shard {spec!r}: expected I/N, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard {spec!r}: need 0 <= I < N")
    return i, n


def shard_of(sha256: object, n: int) -> int:
    return int(sha256[:15], 16) % n if isinstance(sha256, str) and sha256 else 0


def select_shard(listing: pd.DataFrame, i: int, n: int) -> pd.DataFrame:
    mask = listing["sha256"].map(lambda s: shard_of(s, n) == i)
    return listing[mask.astype(bool)].reset_index(drop=True)


def merge_shards(shard_tables: Sequence[Path], out: Path) -> EmbedStats:
    """Concatenate shard face tables (and image records, stats) into one source table."""
    faces = pd.concat([schema.read_table(p) for p in shard_tables], ignore_index=True)
    images = pd.concat([schema.read_table(sidecar_paths(Path(p))[0]) for p in shard_tables], ignore_index=True)
    faces = faces.sort_values(["path", "face_index"], kind="stable").reset_index(drop=True)
    images = images.sort_values("path", kind="stable").reset_index(drop=True)
    images_out, stats_out = sidecar_paths(Path(out))
    schema.write_table(images, schema.IMAGES, images_out)
    schema.write_table(faces, schema.FACES, out)
    parts = [json.loads(sidecar_paths(Path(p))[1].read_text()) for p in shard_tables]
    retry = []
    for p in shard_tables:
        rp = retry_path(Path(p))
        retry += json.loads(rp.read_text()) if rp.exists() else []
    write_json(retry_path(Path(out)), sorted(retry, key=lambda d: d["path"]))
    analyzed = sum(p["analyzed"] for p in parts)
    seconds = max((p["seconds"] for p in parts), default=0.0)  # shards run side by side
    stats = EmbedStats(
        images=sum(p["images"] for p in parts),
        files=sum(p["files"] for p in parts),
        analyzed=analyzed,
        faces=len(faces),
        noface=int((images["status"] == "noface").sum()),
        errors=int((images["status"] == "error").sum()),
        retry=len(retry),
        seconds=seconds,
        img_per_s=round(analyzed / seconds, 2) if seconds and analyzed else 0.0,
        model_id=parts[0]["model_id"] if parts else "",
        finished=max((p.get("finished", "") for p in parts), default=""),
    )
    write_json(stats_out, asdict(stats))
    return stats
