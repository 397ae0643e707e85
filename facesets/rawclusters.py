"""The ``cluster`` stage: a face table -> raw clusters on disk.

Output folder (written to a temp folder beside it, then swapped in, so it is never half
written):

* ``person_NNN/``: one per multi-face cluster, largest first (NNN from 001),
* ``_singletons/``: faces alone in their cluster,
* ``_noface/``: photos without a face,
* ``manifest.json``: for every face its key, path, aliases, bbox and cluster; the clusters;
  no-face photos; unreadable photos with their reason; photos that vanished since embed
  (``vanished``: reported by name and skipped, never a dangling link); the threshold, method
  and model (facesets/manifests.py, ``RawClusterManifest``).

A photo appears in the folder of each of its faces' clusters, once per path: the canonical
path and every alias are materialised (hardlink, symlink or copy per ``link_mode``; a hardlink
across filesystems falls back to a copy). File names are the photo's path flattened safely
(``link_name``: the source name and the path under the source root, flattened by ``safe_name``).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from facesets import schema
from facesets.atomic import staged_dir
from facesets.embed import sidecar_paths
from facesets.graph_cluster import cluster as cluster_faces  # every cluster.method (HAC and context)
from facesets.manifests import RAW_MANIFEST, VERSION, RawClusterManifest, write_manifest
from facesets.tables import one_model, read_faces

log = logging.getLogger(__name__)
LINK_MODES = ("hardlink", "symlink", "copy")
MAX_NAME_BYTES = 200
_UNSAFE = set('<>:"/\\|?*')


def safe_name(path: str) -> str:
    """Flatten a path into one safe file name: ``/mnt/nas/2020/a b.jpg`` -> ``mnt__nas__2020__a b.jpg``.

    Separators become ``__``; characters Windows or shells choke on (``<>:"/\\|?*``, control
    characters) become ``_``; letters in any script stay. Over 200 bytes, the head is replaced
    by a short hash so names stay unique and within filesystem limits.
    """
    parts = [p for p in Path(path).as_posix().split("/") if p not in ("", ".")]
    flat = "__".join(parts)
    flat = "".join("_" if (c in _UNSAFE or unicodedata.category(c)[0] == "C") else c for c in flat)
    flat = flat.lstrip(".") or "_"
    if len(flat.encode("utf-8")) > MAX_NAME_BYTES:
        digest = hashlib.sha1(flat.encode("utf-8", "surrogateescape")).hexdigest()[:12]
        tail = flat.encode("utf-8")[-(MAX_NAME_BYTES - 14) :].decode("utf-8", "ignore")
        flat = f"{digest}__{tail}"
    return flat


class PhotoVanished(FileNotFoundError):
    """The photo was there at embed time and is gone now (moved or deleted)."""

    def __init__(self, path: str) -> None:
        super().__init__(errno.ENOENT, "photo vanished since embed", path)
        self.path = path


def materialize(src: str, dest: Path, mode: str) -> str:
    """Place ``src`` at ``dest``; returns the mode actually used. PhotoVanished when ``src`` is gone
    (checked first, so symlink mode never leaves a dangling link)."""
    if not os.path.exists(src):
        raise PhotoVanished(src)
    try:
        return _materialize(src, dest, mode)
    except FileNotFoundError:
        if not os.path.exists(src):  # gone between the check and the link
            raise PhotoVanished(src) from None
        raise


def _materialize(src: str, dest: Path, mode: str) -> str:
    if mode == "symlink":
        os.symlink(os.path.abspath(src), dest)
        return mode
    if mode == "hardlink":
        try:
            os.link(src, dest)
            return mode
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
    shutil.copy2(src, dest)
    return "copy"


@dataclass(frozen=True)
class ClusterOptions:
    """The ``cluster`` config section (defaults there); ``threshold`` resolved from the model profile."""

    threshold: float
    link_mode: str
    method: str
    exact_max: int
    knn: int


def cluster_table(faces: pd.DataFrame, opts: ClusterOptions) -> pd.DataFrame:
    """Add ``cluster`` (folder name) and ``cluster_index`` to a face table."""
    faces = faces.copy()
    if not len(faces):
        faces["cluster_index"] = pd.Series(dtype=np.int64)
        faces["cluster"] = pd.Series(dtype=str)
        return faces
    res = cluster_faces(
        faces["face_key"].to_numpy(),
        np.stack(faces["embedding"].to_numpy()),
        faces["sha256"].to_numpy(),
        opts.threshold,
        method=opts.method,
        exact_max=opts.exact_max,
        k=opts.knn,
    )
    sizes = np.bincount(res.labels)
    faces["cluster_index"] = res.labels
    faces["cluster"] = [f"person_{c + 1:03d}" if sizes[c] > 1 else "_singletons" for c in res.labels]
    log.info(
        "cluster: %d faces -> %d clusters (%d multi-face, %d singletons), method %s",
        len(faces),
        len(sizes),
        int((sizes > 1).sum()),
        int((sizes == 1).sum()),
        res.method,
    )
    return faces


def _paths(row) -> list[str]:
    return [row.path, *(list(row.aliases) if row.aliases is not None else [])]


def link_name(row, path: str) -> str:
    """File name for one path of a photo: its source name + path under the source root, flattened.

    Relative to the root (not absolute) so names stay stable when the source root moves.
    """
    rel = getattr(row, "relpath", None)
    rel = rel if isinstance(rel, str) and rel and row.path.endswith(rel) else None
    if rel is not None:
        root = row.path[: len(row.path) - len(rel)]
        rel = os.path.relpath(path, root) if path != row.path else rel
    return safe_name(f"{row.source}/{rel if rel is not None else path}")


def write_clusters(
    faces: pd.DataFrame, images: pd.DataFrame, out: Path, opts: ClusterOptions, model_id: str
) -> RawClusterManifest:
    """Write the cluster folders and manifest to ``out`` (swapped in atomically)."""
    used: dict[str, int] = {}
    placed: set[tuple[str, str]] = set()
    vanished: set[str] = set()

    def place(row, folder: Path, p: str) -> None:
        try:
            folder.mkdir(exist_ok=True)
            mode = materialize(p, folder / link_name(row, p), opts.link_mode)
        except PhotoVanished:
            if p not in vanished:
                log.warning("cluster: %s: photo vanished since embed; skipped (run embed again to forget it)", p)
            vanished.add(p)
            return
        used[mode] = used.get(mode, 0) + 1

    with staged_dir(out) as tmp:
        for row in faces.itertuples(index=False):
            for p in _paths(row):
                if (row.cluster, p) in placed:
                    continue  # a photo with two faces in _singletons is placed once
                placed.add((row.cluster, p))
                place(row, tmp / row.cluster, p)
        noface = images[images["status"] == "noface"]
        for row in noface.itertuples(index=False):
            for p in _paths(row):
                place(row, tmp / "_noface", p)
        clusters = (
            faces.groupby("cluster", sort=False)
            .agg(size=("face_key", "size"), photos=("sha256", "nunique"))
            .reset_index()
            .sort_values("cluster")
        )
        manifest: RawClusterManifest = {
            "version": VERSION,
            "model_id": model_id,
            "threshold": opts.threshold,
            "method": opts.method,
            "link_mode": opts.link_mode,
            "link_modes_used": used,
            "clusters": [
                {"name": r.cluster, "faces": int(r.size), "photos": int(r.photos)}
                for r in clusters.itertuples(index=False)
            ],
            "faces": [
                {
                    "face_key": r.face_key,
                    "path": r.path,
                    "aliases": list(r.aliases) if r.aliases is not None else [],
                    "bbox": [round(float(v), 2) for v in (r.x1, r.y1, r.x2, r.y2)],
                    "det_score": round(float(r.det_score), 4),
                    "cluster": r.cluster,
                }
                for r in faces.sort_values(["cluster", "face_key"]).itertuples(index=False)
            ],
            "noface": sorted(p for r in noface.itertuples(index=False) for p in _paths(r)),
            "errors": [
                {"path": r.path, "error": r.error}
                for r in images[images["status"] == "error"].sort_values("path").itertuples(index=False)
            ],
            "vanished": sorted(vanished),
        }
        write_manifest(tmp / RAW_MANIFEST, manifest)
    return manifest


def run_cluster(faces_path: Path, out: Path, opts: ClusterOptions) -> RawClusterManifest:
    """``facesets cluster FACES OUT``: read a face table and its image records, write clusters."""
    faces = read_faces(faces_path)
    images_path, _ = sidecar_paths(Path(faces_path))
    images = schema.read_table(images_path) if images_path.exists() else pd.DataFrame(columns=schema.IMAGES.names)
    model_id = one_model(faces, str(faces_path), "clustered")
    return write_clusters(cluster_table(faces, opts), images, out, opts, model_id)
