"""``era-split --export``: each era exported like a face set of export-swap (facesets.export)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from facesets import schema
from facesets.era.readers import load_faces
from facesets.manifests import ERAS_MANIFEST, THIN_MARKER

log = logging.getLogger("facesets.era")






def member_faces(tables: Sequence[str | os.PathLike[str]], photos: set[str]) -> pd.DataFrame:
    """Every face (all columns) of the given photos, from the face tables (export needs the
    other faces of a photo too: a crop must show only the member's face)."""
    frames = []
    for i, p in enumerate(tables):
        df = schema.read_table(p)
        df = df[df["sha256"].isin(photos)].copy()
        df["_table"] = i
        frames.append(df)
    faces = pd.concat(frames, ignore_index=True).sort_values(["face_key", "_table"], kind="stable")
    return faces.drop_duplicates("face_key").drop(columns="_table").reset_index(drop=True)


def export_eras(
    manifest: Mapping[str, Any],
    tables: Sequence[str | os.PathLike[str]],
    quality: pd.DataFrame | None,
    groups: Mapping[str, str],
    out_dir: Path,
    settings: Mapping[str, Any] | None,
    detector: Any,
    detector_id: str = "",
    crop_cache: Path | None = None,
) -> dict[str, Any]:
    """Each era exported like a face set by export-swap (facesets.export.export_facesets): crops of
    the member face, ``<era>_topN.fsz`` / ``<era>_all.fsz``, ``<era>.txt``; thin eras get THIN.txt.

    Returns the export manifest (contract 4 shape, ``source`` = ``eras:<identity>``); writes the
    era folders into ``out_dir`` (the caller swaps it in) but no top-level file.
    """
    from facesets.atomic import write_text
    from facesets.export import export_facesets

    eras = list(manifest["eras"])
    source = f"eras:{manifest['identity']}"
    photos = {m["sha256"] for e in eras for m in e["members"]}
    faces = member_faces(tables, photos) if photos else load_faces(tables).iloc[:0]
    exp = export_facesets(eras, faces, quality, groups, out_dir, settings, detector, detector_id, crop_cache, source)
    for e in exp["facesets"]:
        if e.get("thin"):
            write_text(
                Path(out_dir) / e["dir"] / THIN_MARKER,
                f"{e['name']}: fewer than {manifest['settings']['min_era_faces']} faces in the era split\n",
            )
    return {**exp, "source": source, "identity": manifest["identity"], "eras_manifest": ERAS_MANIFEST}
