"""The ``refine`` stage: a face table (+ quality table) -> proposed face sets.

The seed's steps, in order, all with the cluster engine (``facesets/clustering.py``) and the
embedding model's threshold profile (``facesets/thresholds.py``):

1. initial clustering: average linkage at ``cluster_threshold`` (profile ``cluster``: 0.55
   buffalo_l, 0.52 SFace), cannot-link between faces of one photo;
2. centroid merge at ``merge_threshold`` (profile ``merge``: 0.40 / 0.38) of the multi-face
   clusters (a singleton close enough to a cluster's centroid has already joined it in step
   1; leaving singletons out keeps the merge small on big libraries), cannot-link respected;
3. quality gate: ``min_short`` (face box short edge, original px, 90), ``min_blur``
   (Laplacian variance of the aligned face, 40), ``min_det_score`` (0.6). A face is counted
   under the first gate it fails, in that order;
4. outlier rejection: faces farther than ``outlier_threshold`` (profile ``outlier``: 0.55 /
   0.52) from their cluster's centroid, in clusters of at least ``outlier_min_size`` (4);
5. size filter: clusters with fewer than ``min_faces`` (15) unique photos are dropped.

The survivors are numbered ``faceset_001`` … by size (largest first, then smallest face key):
deterministic whatever the row order. Output folder (written beside, then swapped in):
``faceset_NNN/`` with the member photos (hardlinks/symlinks/copies named as in the raw
clusters) and ``refine_manifest.json`` (docs/architecture.md, contract 3).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from facesets import thresholds
from facesets.atomic import staged_dir
from facesets.clustering import canonical_labels, centroid_merge, centroids, reject_outliers
from facesets.graph_cluster import cluster as cluster_faces  # every cluster.method (HAC and context)
from facesets.manifests import REFINE_MANIFEST, refine_manifest, write_manifest
from facesets.options import section
from facesets.rawclusters import PhotoVanished, link_name, materialize
from facesets.tables import one_model, read_faces, read_quality
from facesets.thresholds import ModelThresholds

log = logging.getLogger(__name__)

GATES = ("min_short", "min_blur", "min_det_score")


@dataclass(frozen=True)
class RefineOptions:
    """The ``refine`` section (distances resolved from the model profile) and the cluster engine's
    ``method``/``exact_max``/``knn`` from the ``cluster`` section; every default is the schema's."""

    cluster_threshold: float
    merge_threshold: float
    outlier_threshold: float
    outlier_min_size: int
    min_short: float
    min_blur: float
    min_det_score: float
    min_faces: int
    link_mode: str
    method: str
    exact_max: int
    knn: int


def resolve_options(
    settings: Mapping[str, Any] | None, th: ModelThresholds, cluster: Mapping[str, Any] | None = None
) -> RefineOptions:
    """Options from a ``refine`` section (defaults filled); null distances come from the profile.

    ``cluster`` (the ``cluster`` section) supplies the engine's method/exact_max/knn.
    """
    s = section("refine", settings, "refine settings")
    engine = section("cluster", {k: v for k, v in (cluster or {}).items() if k in ("method", "exact_max", "knn")})

    def pick(key: str, default: float) -> float:
        return float(s[key]) if s[key] is not None else default

    return RefineOptions(
        cluster_threshold=pick("cluster_threshold", th.cluster),
        merge_threshold=pick("merge_threshold", th.merge),
        outlier_threshold=pick("outlier_threshold", th.outlier),
        outlier_min_size=int(s["outlier_min_size"]),
        min_short=float(s["min_short"]),
        min_blur=float(s["min_blur"]),
        min_det_score=float(s["min_det_score"]),
        min_faces=int(s["min_faces"]),
        link_mode=s["link_mode"],
        method=engine["method"],
        exact_max=int(engine["exact_max"]),
        knn=int(engine["knn"]),
    )


# --------------------------------------------------------------------------- quality


def face_short(faces: pd.DataFrame) -> np.ndarray:
    """Short edge of each face box (original pixels)."""
    return np.minimum(faces["x2"] - faces["x1"], faces["y2"] - faces["y1"]).to_numpy(np.float64)


def align_quality(faces: pd.DataFrame, quality: pd.DataFrame | None, where: str = "quality table") -> pd.DataFrame:
    """Quality rows (indexed by face_key) in the face table's row order.

    Without a quality table: face_short from the box, det_score from the table, everything
    else unknown (NaN), so the blur gate cannot apply.
    """
    keys = faces["face_key"].to_numpy()
    if quality is None:
        return pd.DataFrame(
            {"face_short": face_short(faces), "det_score": faces["det_score"].to_numpy(np.float64), "blur": np.nan},
            index=pd.Index(keys, name="face_key"),
        )
    if "face_key" in quality.columns:
        quality = quality.drop_duplicates("face_key").set_index("face_key")
    absent = np.setdiff1d(keys, quality.index.to_numpy())
    if len(absent):
        raise ValueError(
            f"{where}: no quality rows for {len(absent)} face(s) of the face table "
            f"(e.g. {absent[0]}); run enrich on this face table first"
        )
    return quality.loc[keys]


def gate_reasons(quality: pd.DataFrame, opts: RefineOptions, blur_known: bool = True) -> np.ndarray:
    """Per face: the first quality gate it fails (``min_short``, ``min_blur``, ``min_det_score``) or ''.

    An unknown blur (NaN) fails ``min_blur`` when a quality table was given (``blur_known``).
    """
    n = len(quality)
    out = np.full(n, "", dtype=object)
    short = quality["face_short"].to_numpy(np.float64)
    blur = quality["blur"].to_numpy(np.float64)
    det = quality["det_score"].to_numpy(np.float64)
    tests = {
        "min_short": ~(short >= opts.min_short),
        "min_blur": ~(blur >= opts.min_blur) if blur_known else np.zeros(n, bool),
        "min_det_score": ~(det >= opts.min_det_score),
    }
    for gate in GATES:
        out[(out == "") & tests[gate]] = gate
    return out


def quality_gate(
    faces: pd.DataFrame, quality: pd.DataFrame | None, settings: Mapping[str, Any] | None
) -> tuple[np.ndarray, dict[str, int]]:
    """(pass mask in the face table's row order, rejected faces per gate) for a ``refine`` section."""
    opts = resolve_options(settings, thresholds.ARCFACE)  # distances unused here
    reasons = gate_reasons(align_quality(faces, quality), opts, blur_known=quality is not None)
    return reasons == "", {g: int((reasons == g).sum()) for g in GATES}


# --------------------------------------------------------------------------- the steps


@dataclass(frozen=True)
class RefineResult:
    labels: np.ndarray  # per face: faceset index 0.. (largest first), or -1
    reasons: np.ndarray  # per face: '' (kept) or min_short | min_blur | min_det_score | outlier | size
    clusters_initial: int
    after_merge: int

    @property
    def n_facesets(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) and self.labels.max() >= 0 else 0

    def stats(self) -> dict[str, Any]:
        rejected = {k: int((self.reasons == k).sum()) for k in (*GATES, "outlier", "size")}
        return {
            "faces": len(self.labels),
            "clusters_initial": self.clusters_initial,
            "after_merge": self.after_merge,
            "rejected": rejected,
            "facesets": self.n_facesets,
        }


def refine_labels(
    keys: np.ndarray,
    emb: np.ndarray,
    groups: np.ndarray,
    gates: np.ndarray,
    opts: RefineOptions,
    labels: np.ndarray | None = None,
) -> RefineResult:
    """Steps 1-5 on arrays: face keys, embeddings, photo ids (cannot-link), gate reasons ('' = pass).

    ``labels``: an initial clustering to start from instead of step 1 (values < 0 = alone).
    """
    keys = np.asarray(keys, dtype=object).astype(str)
    groups = np.asarray(groups, dtype=object).astype(str)
    n = len(keys)
    reasons = np.asarray(gates, dtype=object).copy()
    if n == 0:
        return RefineResult(np.zeros(0, np.int64), reasons, 0, 0)
    if labels is None:
        start = cluster_faces(
            keys, emb, groups, opts.cluster_threshold, method=opts.method, exact_max=opts.exact_max, k=opts.knn
        ).labels
    else:
        start = np.asarray(labels, np.int64).copy()
        alone = start < 0
        start[alone] = start.max(initial=-1) + 1 + np.arange(int(alone.sum()))
        start = canonical_labels(start, keys)
    sizes = np.bincount(start)
    multi = sizes[start] > 1
    merged = start.copy()
    if len(np.unique(start[multi])) > 1:
        merged = np.where(multi, centroid_merge(emb, np.where(multi, start, -1), groups, opts.merge_threshold), start)
    after_merge = len(np.unique(merged))

    lab = np.where(reasons == "", merged, -1)
    kept = reject_outliers(emb, lab, (opts.outlier_threshold,), opts.outlier_min_size)
    reasons[(lab >= 0) & (kept < 0)] = "outlier"

    for c in np.unique(kept[kept >= 0]):
        rows = kept == c
        if len(np.unique(groups[rows])) < opts.min_faces:
            kept[rows] = -1
            reasons[rows] = "size"
    final = np.full(n, -1, np.int64)
    ok = kept >= 0
    if ok.any():
        final[ok] = canonical_labels(kept[ok], keys[ok])
    return RefineResult(final, reasons, len(sizes), after_merge)


def faceset_name(index: int) -> str:
    return f"faceset_{index + 1:03d}"


def _aliases(row: Any) -> list[str]:
    a = getattr(row, "aliases", None)
    return list(a) if a is not None else []


def _emb(faces: pd.DataFrame) -> np.ndarray:
    return np.stack(faces["embedding"].to_numpy()).astype(np.float32) if len(faces) else np.zeros((0, 1), np.float32)


def build_entries(faces: pd.DataFrame, result: RefineResult) -> list[dict[str, Any]]:
    """The manifest's ``facesets`` list: name, sizes, centroid (L2-normalised), members."""
    cents = centroids(_emb(faces), result.labels, result.n_facesets) if result.n_facesets else np.zeros((0, 1))
    sets = []
    for c in range(result.n_facesets):
        members = faces[result.labels == c].sort_values("face_key")
        sets.append(
            {
                "name": faceset_name(c),
                "faces": len(members),
                "unique_images": int(members["sha256"].nunique()),
                "centroid": [round(float(v), 6) for v in cents[c]],
                "members": [
                    {
                        "face_key": r.face_key,
                        "path": r.path,
                        "aliases": _aliases(r),
                        "sha256": r.sha256,
                        "bbox": [round(float(v), 2) for v in (r.x1, r.y1, r.x2, r.y2)],
                    }
                    for r in members.itertuples(index=False)
                ],
            }
        )
    return sets


def refine_faces(
    faces: pd.DataFrame,
    quality: pd.DataFrame | None,
    settings: Mapping[str, Any] | None,
    th: ModelThresholds,
    labels: np.ndarray | None = None,
    cluster: Mapping[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The refine pipeline on a face table: (faceset entries as in refine_manifest, stats).

    ``quality``: enrich's table (indexed by or holding ``face_key``), or None (no blur gate).
    ``labels``: an initial clustering aligned with ``faces`` rows (skips the clustering step).
    """
    opts = resolve_options(settings, th, cluster)
    order = np.argsort(faces["face_key"].to_numpy().astype(str), kind="stable")
    faces = faces.iloc[order].reset_index(drop=True)
    if labels is not None:
        labels = np.asarray(labels)[order]
    gates = gate_reasons(align_quality(faces, quality), opts, blur_known=quality is not None)
    result = refine_labels(faces["face_key"].to_numpy(), _emb(faces), faces["sha256"].to_numpy(), gates, opts, labels)
    return build_entries(faces, result), result.stats()


# --------------------------------------------------------------------------- output


def write_refine(manifest: Mapping[str, Any], faces: pd.DataFrame, out: Path, link_mode: str) -> None:
    """One folder per ``manifest["facesets"][i]["name"]`` with its member photos linked (canonical
    path and aliases, named as in the raw clusters), plus ``refine_manifest.json``; swapped in
    atomically."""
    rows = {r.face_key: r for r in faces.itertuples(index=False)}
    with staged_dir(out) as tmp:
        for fs in manifest["facesets"]:
            folder = tmp / fs["name"]
            folder.mkdir()
            for m in fs["members"]:
                row = rows.get(m["face_key"])
                if row is None:
                    raise ValueError(f"faceset {fs['name']}: member {m['face_key']} is not in the face table")
                for p in [row.path, *_aliases(row)]:
                    dest = folder / link_name(row, p)
                    if dest.exists():
                        continue
                    try:
                        materialize(p, dest, link_mode)
                    except PhotoVanished:
                        log.warning("%s: %s: photo vanished since embed; not linked", fs["name"], p)
            if fs.get("marker"):
                line = f"source: {manifest.get('source', '')}; face set: {fs['name']}; kind: {fs.get('kind', 'discovered')}\n"
                (folder / fs["marker"]).write_text(line, encoding="utf-8")
        write_manifest(tmp / REFINE_MANIFEST, manifest)


def run_refine(
    faces_path: Path,
    out: Path,
    settings: Mapping[str, Any] | None,
    quality: Path | None = None,
    cluster: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``facesets refine FACES OUT``: face table (+ quality table) -> face sets + manifest."""
    faces = read_faces(faces_path)
    model_id = one_model(faces, str(faces_path), "refined")
    th = thresholds.for_model(model_id) if model_id else thresholds.ARCFACE
    if quality is None:
        log.warning("refine: no quality table given; the min_blur gate is skipped")
    q = read_quality(quality) if quality is not None else None
    entries, stats = refine_faces(faces, q, settings, th, cluster=cluster)
    opts = resolve_options(settings, th, cluster)
    manifest = refine_manifest(
        entries,
        stats,
        source=str(faces["source"].iloc[0]) if len(faces) else Path(faces_path).parent.name,
        model_id=model_id,
        settings={**asdict(opts), "thresholds_profile": th.name, "quality": str(quality) if quality else None},
    )
    write_refine(manifest, faces, out, opts.link_mode)
    log.info(
        "refine: %d faces, %d clusters -> %d after merge -> %d face sets; rejected %s",
        stats["faces"],
        stats["clusters_initial"],
        stats["after_merge"],
        stats["facesets"],
        stats["rejected"],
    )
    return manifest
