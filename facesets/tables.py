"""Reading the face and quality tables (facesets/schema.py: their columns) for every later stage.

One reader each, with the checks every stage needs: the file exists and is the table it should
be (errors name the file), and the faces of one table set come from one embedding model
(``one_model``: embeddings of different models cannot be compared).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pyarrow as pa

from facesets import schema
from facesets.errors import InputError

QUALITY_COLUMNS = ("face_key", "face_short", "blur", "det_score")

PathLike = str | os.PathLike[str]


def read_faces(path: PathLike, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """A face table from ``facesets embed``; InputError naming the file when it is missing or unreadable."""
    if not Path(path).exists():
        raise InputError(f"{path}: face table not found (a faces.parquet from `facesets embed`)")
    try:
        return schema.read_table(path, list(columns) if columns is not None else None)
    except (OSError, pa.ArrowException, KeyError) as exc:
        raise InputError(f"{path}: cannot read the face table from `facesets embed`: {exc}") from None


def one_model(faces: pd.DataFrame, where: str | Sequence[PathLike], what: str = "compared") -> str:
    """The one embedding model of ``faces`` ("" when there are no faces); ValueError when several."""
    models = sorted(set(faces["model_id"].dropna())) if len(faces) else []
    if len(models) > 1:
        names = where if isinstance(where, str) else ", ".join(map(str, where))
        raise ValueError(f"{names}: faces from several models ({', '.join(models)}) cannot be {what} together")
    return models[0] if models else ""


def read_face_tables(paths: Sequence[PathLike], columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Several sources' face tables as one, one row per face key (a photo in two sources counts once).

    Rows are sorted by face key; the first table listing a face key wins its path and source.
    Faces without an embedding are left out; the tables must hold one model.
    """
    frames = []
    for i, p in enumerate(paths):
        df = read_faces(p, columns)
        df["_table"] = i
        frames.append(df)
    if not frames:
        raise InputError("no face tables given")
    faces = pd.concat(frames, ignore_index=True)
    faces = faces[faces["embedding"].notna()]
    one_model(faces, paths)
    faces = faces.sort_values(["face_key", "_table", "path"], kind="stable")
    faces = faces.drop_duplicates("face_key", keep="first").drop(columns="_table")
    return faces.reset_index(drop=True)


def read_quality(path: PathLike) -> pd.DataFrame:
    """The enrich stage's quality table, indexed by face_key (one row per face; contract 1)."""
    if not Path(path).exists():
        raise InputError(f"{path}: quality table not found (a quality.parquet from `facesets enrich`)")
    try:
        q = schema.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"{path}: cannot read the quality table from `facesets enrich`: {exc}") from None
    missing = [c for c in QUALITY_COLUMNS if c not in q.columns]
    if missing:
        raise InputError(f"{path}: not a quality table (missing columns: {', '.join(missing)})")
    return q.drop_duplicates("face_key").set_index("face_key")


def read_quality_tables(paths: Sequence[PathLike]) -> pd.DataFrame | None:
    """Quality tables of several sources, concatenated, indexed by face key (first wins); None if none."""
    if not paths:
        return None
    q = pd.concat([read_quality(p) for p in paths])
    return q[~q.index.duplicated(keep="first")].sort_index()
