"""The table contracts, in one place: listing, image records, face table.

docs/face-table.md documents every column; tests check that the two agree.
All tables are Parquet so pandas, pyarrow and duckdb read them directly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from facesets.atomic import atomic_path

SCHEMA_VERSION = 2  # bump when a table changes: rules carry it as a param, so tables are rebuilt

LISTING = pa.schema(
    [
        ("source", pa.string()),
        ("sha256", pa.string()),  # null when the file could not be read
        ("path", pa.string()),  # canonical absolute path
        ("relpath", pa.string()),  # relative to the source root, '/'-separated
        ("aliases", pa.list_(pa.string())),  # other paths with identical bytes
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("width", pa.int32()),  # oriented
        ("height", pa.int32()),
        ("orientation", pa.int8()),  # EXIF orientation 1..8
        ("capture_time", pa.string()),  # ISO 8601 from EXIF, or null
        ("error", pa.string()),  # why the file could not be read, or null
    ]
)

# Columns an analyzer produces per image; the face store persists exactly these.
STORE = pa.schema(
    [
        ("sha256", pa.string()),
        ("status", pa.string()),  # faces | noface | error
        ("error", pa.string()),
        ("img_width", pa.int32()),
        ("img_height", pa.int32()),
        ("face_index", pa.int16()),  # -1 on noface/error rows
        ("x1", pa.float32()),
        ("y1", pa.float32()),
        ("x2", pa.float32()),
        ("y2", pa.float32()),
        ("kps", pa.list_(pa.float32(), 10)),  # 5 keypoints x,y (eyes, nose, mouth corners)
        ("det_score", pa.float32()),
        ("embedding", pa.list_(pa.float32())),  # L2-normalised
        ("model_id", pa.string()),
    ]
)

IMAGES = pa.schema(
    [
        ("source", pa.string()),
        ("sha256", pa.string()),
        ("path", pa.string()),
        ("relpath", pa.string()),
        ("aliases", pa.list_(pa.string())),
        ("status", pa.string()),  # faces | noface | error
        ("error", pa.string()),
        ("n_faces", pa.int32()),
        ("img_width", pa.int32()),
        ("img_height", pa.int32()),
        ("orientation", pa.int8()),
        ("capture_time", pa.string()),
        ("model_id", pa.string()),
    ]
)

FACES = pa.schema(
    [
        ("face_key", pa.string()),  # "<sha256>_<face_index>": stable across paths and runs
        ("sha256", pa.string()),
        ("face_index", pa.int16()),  # 0.. left to right
        ("source", pa.string()),
        ("path", pa.string()),
        ("relpath", pa.string()),  # relative to the source root
        ("aliases", pa.list_(pa.string())),
        ("img_width", pa.int32()),
        ("img_height", pa.int32()),
        ("x1", pa.float32()),
        ("y1", pa.float32()),
        ("x2", pa.float32()),
        ("y2", pa.float32()),
        ("kps", pa.list_(pa.float32(), 10)),
        ("det_score", pa.float32()),
        ("embedding", pa.list_(pa.float32())),
        ("model_id", pa.string()),
    ]
)

# enrich's output (work/sources/<s>/quality.parquet): one row per face of the face table.
QUALITY = pa.schema(
    [
        ("face_key", pa.string()),
        ("face_short", pa.float32()),  # short edge of the box, original oriented pixels
        ("blur", pa.float32()),  # variance of the Laplacian on the 112x112 aligned face (NaN: unreadable)
        ("det_score", pa.float32()),
        ("symmetry", pa.float32()),  # [0, 1], 1 = mirror-symmetric 5 keypoints (facesets/pose.py)
        ("pitch", pa.float32()),  # degrees, NaN when unknown (facesets/pose.py conventions)
        ("yaw", pa.float32()),
        ("roll", pa.float32()),
        ("pose_source", pa.string()),  # insightface | kps5_pnp
        ("exif_year", pa.int16()),  # EXIF DateTimeOriginal year, null when absent
        ("landmark_2d_106", pa.list_(pa.float32())),  # 106 x,y pairs (original pixels) or null
        ("landmark_3d_68", pa.list_(pa.float32())),  # 68 x,y,z triples (original pixels) or null
    ]
)


def face_key(sha256: str, face_index: int) -> str:
    return f"{sha256}_{face_index}"


def conform(df: pd.DataFrame, schema: pa.Schema) -> pd.DataFrame:
    """Order columns as the schema says (missing ones become null)."""
    for name in schema.names:
        if name not in df.columns:
            df[name] = None
    return df[list(schema.names)]


def to_arrow(df: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pandas(conform(df, schema), schema=schema, preserve_index=False)


def write_table(df: pd.DataFrame | pa.Table, schema: pa.Schema, path: str | os.PathLike[str]) -> None:
    """Write a table atomically with the contract's schema and version in the metadata."""
    table = df if isinstance(df, pa.Table) else to_arrow(df, schema)
    table = table.cast(schema).replace_schema_metadata({"facesets_schema_version": str(SCHEMA_VERSION)})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_table(path: str | os.PathLike[str], columns: Sequence[str] | None = None) -> pd.DataFrame:
    return pq.read_table(path, columns=list(columns) if columns else None).to_pandas()
