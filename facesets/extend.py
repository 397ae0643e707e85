"""``facesets extend FACES RAW [--refine-out OUT]``: grow raw clusters without moving anyone.

The seed's extend: faces already in ``RAW/manifest.json`` keep their folder. Each new face
joins the nearest existing ``person_NNN`` whose centroid is within the model's ``match``
distance (cannot-link: never a second face of a photo the person already has); the rest,
together with the old singletons, is clustered at the model's ``cluster`` cut into new
``person_NNN`` numbered past the current maximum. The folder is rewritten atomically.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from facesets import schema
from facesets.clustering import assign_or_cluster, centroids, group_ids, normalize
from facesets.embed import sidecar_paths
from facesets.manifests import RAW_MANIFEST, read_raw_manifest, refine_manifest
from facesets.options import build
from facesets.rawclusters import ClusterOptions, write_clusters
from facesets.thresholds import for_model

log = logging.getLogger(__name__)
PERSON = re.compile(r"^person_(\d+)$")


def person_name(n: int) -> str:
    return f"person_{n:03d}"


def extend_assignment(faces: pd.DataFrame, old: dict[str, str], match: float, cluster: float) -> pd.Series:
    """Folder name per face (index aligned with ``faces``): old faces keep theirs."""
    keys = faces["face_key"].to_numpy().astype(str)
    emb = normalize(np.stack(faces["embedding"].to_numpy()).astype(np.float64))
    photos = faces["sha256"].to_numpy().astype(str)
    names = np.array([old.get(k, "") for k in keys], dtype=object)
    persons = sorted({n for n in names if PERSON.match(n)}, key=lambda n: int(PERSON.match(n).group(1)))
    index = {n: i for i, n in enumerate(persons)}
    lab = np.array([index.get(n, -1) for n in names])
    protos = centroids(emb, lab, len(persons)) if persons else np.zeros((0, emb.shape[1]))
    pool = np.flatnonzero((names == "") | (names == "_singletons"))
    taken = {(p, int(i)) for p, i in zip(photos[lab >= 0], lab[lab >= 0], strict=True)}
    a = assign_or_cluster(
        keys[pool], emb[pool], photos[pool], protos, np.arange(len(persons)), match, cluster, taken=taken
    )
    top = max((int(PERSON.match(n).group(1)) for n in persons), default=0)
    new_ids = a.identity[~a.matched]
    sizes = np.bincount(new_ids - len(persons)) if len(new_ids) else np.zeros(0, int)
    for row, ident, matched in zip(pool, a.identity, a.matched, strict=True):
        if matched:
            names[row] = persons[ident]
        elif sizes[ident - len(persons)] > 1:
            names[row] = person_name(top + 1 + ident - len(persons))
        else:
            names[row] = "_singletons"
    # New clusters are numbered past the max in size order; singletons do not use a number.
    used = sorted({n for n in names[pool] if PERSON.match(n) and n not in persons}, key=lambda n: int(n[7:]))
    renum = {n: person_name(top + 1 + i) for i, n in enumerate(used)}
    return pd.Series([renum.get(n, n) for n in names], index=faces.index)


def run_extend(
    faces_path: Path, raw: Path, refine_out: Path | None = None, refine_settings: Mapping[str, Any] | None = None
) -> dict:
    """``facesets extend FACES RAW``: the new faces of FACES join the raw clusters of RAW (old faces
    keep their cluster); with ``refine_out`` the clusters are refined too, by ``refine_settings``
    (a ``refine`` config section; schema defaults for what it leaves out)."""
    manifest_path = Path(raw) / RAW_MANIFEST
    manifest = read_raw_manifest(manifest_path)
    faces = schema.read_table(faces_path)
    old = {f["face_key"]: f["cluster"] for f in manifest["faces"]}
    missing = sorted(set(old) - set(faces["face_key"]))
    if missing:
        raise ValueError(
            f"{faces_path}: {len(missing)} faces of {manifest_path} are not in this face table (e.g. {missing[0]}); "
            "extend needs the old faces' embeddings: pass the source's full face table"
        )
    model_id = manifest.get("model_id") or (faces["model_id"].iloc[0] if len(faces) else "")
    th = for_model(model_id)
    faces = faces.sort_values("face_key").reset_index(drop=True)
    faces["cluster"] = extend_assignment(faces, old, th.match, th.cluster)
    images_path, _ = sidecar_paths(Path(faces_path))
    images = schema.read_table(images_path) if images_path.exists() else pd.DataFrame(columns=schema.IMAGES.names)
    kept = {"link_mode": manifest["link_mode"]} if manifest.get("link_mode") else {}
    opts = build(ClusterOptions, "cluster", kept, threshold=float(manifest.get("threshold", th.cluster)))
    new_manifest = write_clusters(faces, images, Path(raw), opts, model_id)
    joined = sum(
        1 for k, c in zip(faces["face_key"], faces["cluster"], strict=True) if k not in old and c in set(old.values())
    )
    summary = {
        "faces": len(faces),
        "new_faces": int((~faces["face_key"].isin(list(old))).sum()),
        "joined_existing": joined,
        "clusters": sum(1 for c in new_manifest["clusters"] if c["name"] != "_singletons"),
    }
    if refine_out is not None:
        from facesets.refine import refine_faces, write_refine

        labels = group_ids(faces["cluster"].where(faces["cluster"] != "_singletons", faces["face_key"]).to_numpy())
        entries, stats = refine_faces(faces, None, dict(refine_settings or {}), th, labels=labels)
        source = str(faces["source"].iloc[0]) if len(faces) else Path(faces_path).parent.name
        write_refine(refine_manifest(entries, stats, source=source, model_id=model_id), faces, refine_out, opts.link_mode)
        summary["facesets"] = len(entries)
    log.info("extend: %s", summary)
    return summary
