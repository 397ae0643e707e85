"""Era split: one curated identity -> eras ``<identity>_era<k>`` (a child growing up, decades of photos).

docs/eras.md describes the method and the files; in short, for one identity:

1. **Seed**: the centroid of the curated identity (``MANIFEST#NAME``: a refine/export manifest
   entry, or the identity ledger's per-model centroid).
2. **Wide recovery**: every face of the given face tables (the sources) within ``recover``
   of the seed centroid.
3. **Quality gates**: ``min_short``, ``min_blur``, ``min_det_score``, refine's gate function
   (quality tables when given; without them the face table's box and score, no blur gate).
4. **Re-centroid + tighten**: faces within ``tighten`` of the centroid of what was recovered;
   then one face per photo (the one nearest that centroid: a person appears once in a photo).
5. **Sub-clusters**: average linkage at ``subcluster`` with cannot-link (facesets.clustering).
6. **Anchors and fragments**: sub-clusters with at least ``min_era_faces`` faces are anchors.
   A fragment joins the single nearest anchor (centroid to centroid) only if that distance is
   at most ``attach`` *and* their dominant EXIF years differ by at most ``year_window``;
   otherwise it stands alone as an era of its own. Every decision is made against the
   anchors as formed (not as they grow), so the result does not depend on any order.
7. **Eras**, ordered by dominant year (unknown last), then size: ``<identity>_era1``, ...;
   eras under ``min_era_faces`` faces are THIN.

Everything but file reading is a pure function of (faces, quality, years, seed, settings), so
the result does not depend on the row order of the inputs. EXIF years come from the quality
tables (enrich's ``exif_year``) or are read with enrich's reader and cached by sha256 in
immutable segments under the work root, so a re-run reads no photo. ``--export`` exports each
era with export-swap's code (facesets.export).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from facesets import schema
from facesets.clustering import centroids, cluster_faces, normalize
from facesets.refine import quality_gate
from facesets.segcache import SegmentCache
from facesets.thresholds import era_for_model

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
HIST_EDGES = (*(round(0.05 * i, 2) for i in range(21)), 2.0)  # cosine distance bins; last: >= 1.0
YEAR_CACHE_SCHEMA = pa.schema([("sha256", pa.string()), ("exif_year", pa.int16())])
_FACE_COLUMNS = ("face_key", "sha256", "source", "path", "x1", "y1", "x2", "y2", "det_score", "embedding", "model_id")


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class EraSettings:
    """The numbers of one split, every distance resolved for the model (see ``resolve_settings``)."""

    recover: float
    tighten: float
    subcluster: float
    attach: float
    probe_thresholds: tuple[float, ...]
    min_era_faces: int
    year_window: int
    attach_unknown_year: bool
    min_short: float
    min_blur: float
    min_det_score: float

    def gates(self) -> dict[str, float]:
        """The quality gates as a ``refine`` config section (facesets.refine.quality_gate)."""
        return {"min_short": self.min_short, "min_blur": self.min_blur, "min_det_score": self.min_det_score}

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["probe_thresholds"] = list(self.probe_thresholds)
        return d


def resolve_settings(model_id: str, section: Mapping[str, Any]) -> EraSettings:
    """An ``eras`` config section (partial is fine: schema defaults filled, validated) with its null
    distances taken from the model's profile."""
    from facesets.config import load_schema, validate

    section = validate(dict(section), load_schema("config")["properties"]["eras"], "eras settings")
    base = era_for_model(model_id)

    def pick(key: str, default: float) -> float:
        v = section.get(key)
        return float(default if v is None else v)

    probe = section.get("probe_thresholds")
    return EraSettings(
        recover=pick("recover", base.recover),
        tighten=pick("tighten", base.tighten),
        subcluster=pick("subcluster", base.subcluster),
        attach=pick("attach", base.attach),
        probe_thresholds=tuple(float(t) for t in (base.probe if probe is None else probe)),
        min_era_faces=int(section["min_era_faces"]),
        year_window=int(section["year_window"]),
        attach_unknown_year=bool(section["attach_unknown_year"]),
        min_short=float(section["min_short"]),
        min_blur=float(section["min_blur"]),
        min_det_score=float(section["min_det_score"]),
    )


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Seed:
    """The curated identity an era split starts from."""

    spec: str
    manifest: str
    name: str
    centroid: np.ndarray  # L2-normalised
    model_id: str  # the embedding model the centroid belongs to


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise ValueError(f"{path}: not found") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None


def _ledger_centroid(ledger_path: str, obj: Any, name: str, model_id: str) -> np.ndarray:
    from facesets import ledger as L

    ident = L.from_json(obj, where=ledger_path).by_name(name)
    if ident is None:
        raise ValueError(f"{ledger_path}: no identity named {name!r} in the ledger")
    c = ident.centroid(model_id)
    if c is None:
        raise ValueError(f"{ledger_path}: identity {name!r} has no centroid for model {model_id!r}")
    return c


def load_seed(spec: str, model_id: str) -> Seed:
    """``MANIFEST.json#NAME`` -> the curated identity's centroid for the embedding model ``model_id``.

    MANIFEST is any manifest whose ``facesets`` entries carry ``name`` and ``centroid``
    (refine_manifest.json, an export manifest.json), or the identity ledger
    (facesets_swap_ready/ledger.json: per-model centroids). The canonical manifest.json holds
    no centroids: its ``ledger.json`` beside it is used.
    """
    path, sep, name = spec.rpartition("#")
    if not sep or not path or not name:
        raise ValueError(f"--centroid-from {spec!r}: expected MANIFEST.json#FACESET_NAME")
    obj = _read_json(path)
    if isinstance(obj, dict) and isinstance(obj.get("identities"), list):  # the ledger itself
        return Seed(spec, path, name, normalize(_ledger_centroid(path, obj, name, model_id)[None])[0], model_id)
    entries = obj.get("facesets") if isinstance(obj, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: no 'facesets' list (a refine/export manifest or the ledger is expected)")
    found = [e for e in entries + list(obj.get("thin_eras") or []) if isinstance(e, dict) and e.get("name") == name]
    if not found:
        names = ", ".join(str(e.get("name")) for e in entries[:20] if isinstance(e, dict))
        raise ValueError(f"{path}: no faceset named {name!r} (have: {names})")
    cent = found[0].get("centroid")
    beside = Path(path).with_name("ledger.json")
    if cent is None and beside.exists():  # the canonical manifest: centroids live in the ledger
        c = _ledger_centroid(str(beside), _read_json(str(beside)), name, model_id)
        return Seed(spec, str(beside), name, normalize(c[None])[0], model_id)
    if not isinstance(cent, list) or not cent:
        raise ValueError(f"{path}: faceset {name!r} has no 'centroid'")
    c = np.asarray(cent, np.float64)
    if not np.all(np.isfinite(c)) or np.linalg.norm(c) == 0:
        raise ValueError(f"{path}: faceset {name!r} has an invalid centroid")
    made_with = found[0].get("model_id") or obj.get("model_id")
    if isinstance(made_with, str) and made_with and made_with != model_id:
        raise ValueError(
            f"{path}: faceset {name!r} was made with model {made_with!r}, the face tables hold "
            f"{model_id!r}: centroids of different models cannot be compared"
        )
    return Seed(spec, path, name, normalize(c[None])[0], model_id)


def seed_digest(spec: str) -> str:
    """A short digest of the entry ``MANIFEST#NAME`` points at ("absent" when there is none yet).

    The workflow's rerun trigger (a Snakemake param): the split reruns when the curated identity
    changes, without making the ledger, which manifest-merge rewrites, an input. Never raises.
    """
    import hashlib

    path, _, name = spec.rpartition("#")
    try:
        obj = _read_json(path)
        if isinstance(obj, dict) and not isinstance(obj.get("identities"), list) and Path(path).name == "manifest.json":
            beside = Path(path).with_name("ledger.json")
            obj = _read_json(str(beside)) if beside.exists() else obj
        items = (obj.get("identities") or obj.get("facesets") or []) if isinstance(obj, dict) else []
        entry = next((e for e in items if isinstance(e, dict) and e.get("name") == name), None)
    except (ValueError, OSError):
        entry = None
    if entry is None:
        return "absent"
    return hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()[:16]


def workflow_seed_spec(eras: Mapping[str, Any], output_root: str, identity: str) -> str:
    """The ``--centroid-from`` of the workflow's split of ``identity`` (config ``eras.centroid_from``)."""
    base = eras.get("centroid_from") or f"{output_root}/facesets_swap_ready/ledger.json"
    return f"{base}#{identity}"


def workflow_settings(eras: Mapping[str, Any]) -> str:
    """The ``eras`` section as the rule's settings param, minus the keys that choose *what* is split."""
    return json.dumps({k: v for k, v in eras.items() if k not in ("identities", "centroid_from")}, sort_keys=True)


def workflow_export_args(settings: Mapping[str, Any], sources: Sequence[str], work_root: str, model_dir: str) -> str:
    """``era-split`` export flags for the workflow (as rules/export.smk passes them to export-swap),
    or "" when ``eras.export`` is off. ``settings``: the validated global config."""
    import shlex

    if not settings["eras"]["export"]:
        return ""
    backend = settings["backend"]
    export = {k: v for k, v in settings["export"].items() if k != "workers"}
    redetect = {backend: settings["embed"][backend]} if backend == "insightface" else {}
    dups = [f"{work_root}/sources/{s}/duplicates.json" for s in sources]
    parts = ["--export", "--backend", backend, "--export-settings", json.dumps(export, sort_keys=True)]
    parts += ["--embed-settings", json.dumps(redetect, sort_keys=True), "--model-dir", model_dir]
    parts += ["--crop-cache", f"{work_root}/cache/crops", "--duplicates", *dups]
    return " ".join(shlex.quote(p) for p in parts)


def load_faces(paths: Sequence[str | os.PathLike[str]]) -> pd.DataFrame:
    """The face tables of the sources, one row per face key (a photo in two sources counts once).

    Rows are sorted by face key; the first table listing a face key wins its path and source.
    """
    frames = []
    for i, p in enumerate(paths):
        if not Path(p).exists():
            raise ValueError(f"{p}: face table not found")
        df = schema.read_table(p, _FACE_COLUMNS)
        df["_table"] = i
        frames.append(df)
    if not frames:
        raise ValueError("era split: no face tables given (--faces)")
    faces = pd.concat(frames, ignore_index=True)
    faces = faces[faces["embedding"].notna()]
    models = sorted(set(faces["model_id"].dropna()))
    if len(models) > 1:
        raise ValueError(f"face tables {', '.join(map(str, paths))}: faces of several models ({', '.join(models)})")
    faces = faces.sort_values(["face_key", "_table", "path"], kind="stable")
    faces = faces.drop_duplicates("face_key", keep="first").drop(columns="_table")
    return faces.reset_index(drop=True)


def load_quality(paths: Sequence[str | os.PathLike[str]]) -> pd.DataFrame | None:
    """Quality tables of enrich (``schema.QUALITY``), concatenated, indexed by face key; None if none."""
    from facesets.enrich import load_quality as load_one

    if not paths:
        return None
    frames = []
    for p in paths:
        if not Path(p).exists():
            raise ValueError(f"{p}: quality table not found")
        frames.append(load_one(p))
    q = pd.concat(frames)
    return q[~q.index.duplicated(keep="first")].sort_index()


# --------------------------------------------------------------------------- EXIF years


def read_exif_year(path: str | os.PathLike[str]) -> int | None:
    """The photo's EXIF capture year (enrich's reader: piexif, HEIC through pillow-heif); None if absent.

    Raises OSError when the file cannot be opened, so that the answer is not cached.
    """
    from facesets.enrich import read_exif_year as exif_year

    with open(path, "rb"):
        pass  # enrich's reader says None for a missing file; here that must not be cached
    return exif_year(os.fspath(path))


@dataclass
class YearCache:
    """sha256 -> EXIF year (None = the photo has none), cached under ``root``.

    An append-only cache of immutable Parquet segments (facesets/segcache.py, as enrich's): a
    run that learned something adds one uniquely named segment atomically, so concurrent splits
    never lose each other's entries, and a re-run reads no photo.
    """

    root: Path
    years: dict[str, int | None] = field(default_factory=dict)
    new: dict[str, int | None] = field(default_factory=dict)

    def _segments(self) -> SegmentCache:
        return SegmentCache(self.root, YEAR_CACHE_SCHEMA, "sha256")

    def preload(self, sha256s: Sequence[str]) -> None:
        """Read the cached years of these photos (one pass over the segments)."""
        want = [s for s in set(sha256s) if s not in self.years]
        if not want:
            return
        df = self._segments().load(want)
        for sha, y in zip(df["sha256"], df["exif_year"], strict=True):
            self.years[sha] = None if pd.isna(y) else int(y)

    def lookup(self, sha256: str, path: str) -> int | None:
        if sha256 not in self.years:
            self.preload([sha256])
        if sha256 in self.years:
            return self.years[sha256]
        try:
            year = read_exif_year(path)
        except OSError as exc:
            log.warning("era: cannot read EXIF of %s: %s", path, exc)
            return None
        self.years[sha256] = self.new[sha256] = year
        return year

    def save(self) -> None:
        keys = sorted(self.new)
        rows = pd.DataFrame({"sha256": keys, "exif_year": pd.array([self.new[k] for k in keys], dtype="Int16")})
        self._segments().add(rows)
        self.new = {}


def resolve_years(
    faces: pd.DataFrame, quality: pd.DataFrame | None, cache: YearCache | None
) -> tuple[np.ndarray, dict[str, int]]:
    """Per face row, its photo's EXIF year (float, NaN when unknown), and where the years came from.

    The quality table's ``exif_year`` wins (enrich read it; null there means the photo has none);
    the other photos are looked up in the cache and, when missing there, read from the file.
    """
    out = np.full(len(faces), np.nan)
    origin = {"quality": 0, "cache": 0, "exif_read": 0, "unknown": 0}
    keys, shas, paths = (faces[c].to_numpy() for c in ("face_key", "sha256", "path"))
    in_q = np.zeros(len(faces), bool)
    if quality is not None and "exif_year" in quality.columns and len(faces):
        in_q = quality.index.get_indexer(keys) >= 0  # the index is unique (load_quality)
        vals = quality["exif_year"].reindex(keys).to_numpy(np.float64, na_value=np.nan)
        out[in_q] = vals[in_q]
        origin["quality"] = int(in_q.sum())
    if cache is not None and (~in_q).any():
        cache.preload(shas[~in_q].tolist())
        for i in np.flatnonzero(~in_q):
            known = shas[i] in cache.years
            y = cache.lookup(shas[i], paths[i])
            origin["cache" if known else "exif_read"] += 1
            if y is not None:
                out[i] = y
    origin["unknown"] = int(np.isnan(out).sum())
    return out, origin


# --------------------------------------------------------------------------- the pure pipeline


@dataclass(frozen=True)
class Prepared:
    """The faces of one identity after recovery, gates, tightening and one-face-per-photo."""

    faces: pd.DataFrame  # sorted by face_key, with distance columns d_seed and d_centroid
    emb: np.ndarray  # (n, dim) float32, L2-normalised, rows as ``faces``
    centroid: np.ndarray  # the re-computed centroid the faces were tightened around
    counts: dict[str, Any]


def prepare(faces: pd.DataFrame, quality: pd.DataFrame | None, seed: np.ndarray, st: EraSettings) -> Prepared:
    """Steps 2-4 of the split (module docstring) for the faces of the sources."""
    faces = faces.sort_values("face_key", kind="stable").reset_index(drop=True)
    counts: dict[str, Any] = {"faces_in": len(faces)}
    if len(faces):
        x = normalize(np.stack(faces["embedding"].to_numpy()))
        if x.shape[1] != len(seed):
            raise ValueError(f"seed centroid has {len(seed)} dimensions, the face tables' embeddings {x.shape[1]}")
    else:
        x = np.zeros((0, len(seed)), np.float32)
    d_seed = 1.0 - x.astype(np.float64) @ seed.astype(np.float64)
    keep = d_seed <= st.recover
    counts["recovered"] = int(keep.sum())

    # refine's gates (one implementation): without a quality table there is no blur gate
    rec = np.flatnonzero(keep)
    ok, rejected = quality_gate(faces.iloc[rec], quality, st.gates())
    keep[rec[~ok]] = False
    counts["blur_gate"] = quality is not None and st.min_blur > 0

    cent = centroids(x, np.where(keep, 0, -1), 1)[0] if keep.any() else seed.astype(np.float32)
    d_cent = 1.0 - x.astype(np.float64) @ cent.astype(np.float64)
    far = keep & (d_cent > st.tighten)
    rejected["tighten"] = int(far.sum())
    keep &= ~far

    # one face per photo: the one nearest the centroid (then the smallest face key)
    idx = np.flatnonzero(keep)
    order = idx[np.lexsort((faces["face_key"].to_numpy()[idx], d_cent[idx], faces["sha256"].to_numpy()[idx]))]
    sha = faces["sha256"].to_numpy()[order]
    first = np.r_[True, sha[1:] != sha[:-1]] if len(order) else np.zeros(0, bool)
    rejected["same_photo"] = int((~first).sum())
    kept = np.sort(order[first])
    counts["rejected"] = rejected
    counts["faces"] = len(kept)

    out = faces.iloc[kept].drop(columns=["embedding"]).reset_index(drop=True)
    out["d_seed"] = d_seed[kept]
    out["d_centroid"] = d_cent[kept]
    return Prepared(out, x[kept], np.asarray(cent, np.float32), counts)


def dominant_year(years: np.ndarray) -> int | None:
    """The most frequent known year (ties: the earliest); None when no year is known."""
    y = np.asarray(years, np.float64)
    y = y[~np.isnan(y)].astype(np.int64)
    if not len(y):
        return None
    vals, cnt = np.unique(y, return_counts=True)
    return int(vals[np.argmax(cnt)])  # argmax returns the first (earliest) maximum


def year_counts(years: np.ndarray) -> dict[str, int]:
    y = np.asarray(years, np.float64)
    vals, cnt = np.unique(y[~np.isnan(y)].astype(np.int64), return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(vals, cnt, strict=True)}


def distance_histogram(emb: np.ndarray, edges: Sequence[float] = HIST_EDGES, block: int = 2048) -> dict[str, Any]:
    """Histogram and percentiles of all pairwise cosine distances (each unordered pair once)."""
    x = np.asarray(emb, np.float32)
    n = len(x)
    e = np.asarray(edges, np.float64)
    counts = np.zeros(len(e) - 1, np.int64)
    fine = np.zeros(2001, np.int64)  # 0.001-wide bins on [0, 2] for the percentiles
    for s in range(0, n, block):
        d = 1.0 - x[s : s + block] @ x.T
        rows = np.arange(s, min(s + block, n))[:, None]
        d = np.clip(d[rows < np.arange(n)[None, :]].astype(np.float64), 0.0, 2.0)
        counts += np.histogram(d, bins=e)[0]
        fine += np.bincount(np.minimum((d * 1000).astype(np.int64), 2000), minlength=2001)
    pairs = n * (n - 1) // 2
    pct = {}
    if pairs:
        cum = np.cumsum(fine)
        for p in (5, 25, 50, 75, 95):
            pct[f"p{p}"] = round(float(np.searchsorted(cum, p / 100 * pairs)) / 1000, 3)
    return {"edges": [float(v) for v in e], "counts": counts.tolist(), "pairs": int(pairs), "percentiles": pct}


def _subcluster_detail(labels: np.ndarray, years: np.ndarray) -> list[dict[str, Any]]:
    out = []
    for c in range(int(labels.max()) + 1 if len(labels) else 0):
        y = years[labels == c]
        if len(y) < 2:
            continue
        out.append(
            {
                "cluster": c,
                "size": len(y),
                "dominant_year": dominant_year(y),
                "years": year_counts(y),
                "unknown_year": int(np.isnan(y).sum()),
            }
        )
    return out


def probe_report(prep: Prepared, years: np.ndarray, st: EraSettings) -> dict[str, Any]:
    """What an identity looks like before it is split: distances, sub-clusters per cut, years."""
    keys = prep.faces["face_key"].to_numpy()
    groups = prep.faces["sha256"].to_numpy()
    cuts = []
    for t in st.probe_thresholds:
        lab = cluster_faces(keys, prep.emb, groups, t).labels
        sizes = np.bincount(lab).tolist() if len(lab) else []
        cuts.append(
            {
                "threshold": t,
                "clusters": len(sizes),
                "singletons": int(sum(1 for s in sizes if s == 1)),
                "anchors": int(sum(1 for s in sizes if s >= st.min_era_faces)),
                "sizes": sizes,
                "detail": _subcluster_detail(lab, years),
            }
        )
    return {
        "faces": len(keys),
        "unique_images": len(set(groups)),
        "counts": prep.counts,
        "pairwise": distance_histogram(prep.emb),
        "years": year_counts(years),
        "unknown_year": int(np.isnan(years).sum()),
        "subclusters": cuts,
    }


@dataclass(frozen=True)
class EraDraft:
    rows: np.ndarray  # row indices into Prepared.faces, sorted
    anchor: bool  # formed around an anchor sub-cluster
    subclusters: tuple[int, ...]  # sub-cluster labels it holds (anchor first)
    attach_distance: tuple[float, ...]  # centroid distance of each attached fragment to the anchor


def split_subclusters(
    labels: np.ndarray, emb: np.ndarray, years: np.ndarray, st: EraSettings
) -> tuple[list[EraDraft], list[dict[str, Any]]]:
    """Anchors keep their sub-cluster; each fragment joins its nearest anchor or stands alone.

    Returns the drafts and one decision record per fragment (for the manifest).
    """
    n_sub = int(labels.max()) + 1 if len(labels) else 0
    sizes = np.bincount(labels, minlength=n_sub)
    cents = centroids(emb, labels, n_sub).astype(np.float64)
    dom = [dominant_year(years[labels == c]) for c in range(n_sub)]
    anchors = [c for c in range(n_sub) if sizes[c] >= st.min_era_faces]
    joined: dict[int, list[tuple[int, float]]] = {a: [] for a in anchors}
    alone: list[int] = []
    decisions = []
    for f in range(n_sub):
        if f in joined:
            continue
        rec: dict[str, Any] = {"subcluster": f, "size": int(sizes[f]), "dominant_year": dom[f]}
        if anchors:
            d = 1.0 - cents[anchors] @ cents[f]
            j = int(np.argmin(d))  # ties: the lower-numbered (larger) anchor
            a, dist = anchors[j], float(d[j])
            rec.update(nearest_anchor=a, distance=round(dist, 4), anchor_year=dom[a])
            if dom[f] is None or dom[a] is None:
                year_ok = st.attach_unknown_year
            else:
                year_ok = abs(dom[f] - dom[a]) <= st.year_window
            if dist <= st.attach and year_ok:
                joined[a].append((f, dist))
                rec["decision"] = "attached"
            else:
                rec["decision"] = "alone: distance" if dist > st.attach else "alone: year"
                alone.append(f)
        else:
            rec["decision"] = "alone: no anchor"
            alone.append(f)
        decisions.append(rec)
    drafts = [
        EraDraft(
            rows=np.flatnonzero(np.isin(labels, [a, *(f for f, _ in joined[a])])),
            anchor=True,
            subclusters=(a, *(f for f, _ in joined[a])),
            attach_distance=tuple(round(d, 4) for _, d in joined[a]),
        )
        for a in anchors
    ]
    drafts += [EraDraft(np.flatnonzero(labels == f), False, (f,), ()) for f in alone]
    return drafts, decisions


def _era_entry(identity: str, prep: Prepared, years: np.ndarray, draft: EraDraft, st: EraSettings) -> dict[str, Any]:
    f = prep.faces.iloc[draft.rows]
    y = years[draft.rows]
    known = y[~np.isnan(y)]
    cent = centroids(prep.emb[draft.rows], np.zeros(len(draft.rows), np.int64), 1)[0]
    members = []
    for r, yr in zip(f.itertuples(index=False), y, strict=True):
        members.append(
            {
                "face_key": r.face_key,
                "path": r.path,
                "sha256": r.sha256,
                "source": r.source,
                "bbox": [round(float(v), 2) for v in (r.x1, r.y1, r.x2, r.y2)],
                "exif_year": None if np.isnan(yr) else int(yr),
                "distance": round(float(r.d_centroid), 4),
            }
        )
    return {
        "name": "",  # set after ordering
        "kind": "era",
        "parent": identity,
        "thin": bool(len(draft.rows) < st.min_era_faces),
        "faces": len(draft.rows),
        "unique_images": int(f["sha256"].nunique()),
        "dominant_year": dominant_year(y),
        "years": [int(known.min()), int(known.max())] if len(known) else None,
        "year_counts": year_counts(y),
        "unknown_year": int(np.isnan(y).sum()),
        "anchor": draft.anchor,
        "subclusters": len(draft.subclusters),
        "attach_distances": list(draft.attach_distance),
        "centroid": [float(v) for v in cent],
        "members": members,
    }


def era_sort_key(entry: Mapping[str, Any]) -> tuple:
    """Eras are numbered by dominant year (unknown last), then larger first, then smallest face key."""
    y = entry["dominant_year"]
    return (y is None, y if y is not None else 0, -entry["faces"], entry["members"][0]["face_key"])


def build_eras(identity: str, prep: Prepared, years: np.ndarray, st: EraSettings) -> dict[str, Any]:
    """Steps 5-7 of the split: the ``eras`` list (named, ordered) and the fragment decisions."""
    keys = prep.faces["face_key"].to_numpy()
    labels = cluster_faces(keys, prep.emb, prep.faces["sha256"].to_numpy(), st.subcluster).labels
    drafts, decisions = split_subclusters(labels, prep.emb, years, st)
    eras = sorted((_era_entry(identity, prep, years, d, st) for d in drafts), key=era_sort_key)
    for k, e in enumerate(eras, 1):
        e["name"] = f"{identity}_era{k}"
        e["marker"] = f"{e['name']}.txt"
    by_key = {m["face_key"]: e["name"] for e in eras for m in e["members"]}
    for rec in decisions:
        rec["era"] = by_key[keys[labels == rec["subcluster"]][0]]
        if "nearest_anchor" in rec:
            rec["nearest_anchor"] = by_key[keys[labels == rec["nearest_anchor"]][0]]
    return {
        "subclusters": int(labels.max()) + 1 if len(labels) else 0,
        "anchors": int(sum(d.anchor for d in drafts)),
        "fragments": decisions,
        "eras": eras,
    }


def split_identity(
    identity: str,
    faces: pd.DataFrame,
    quality: pd.DataFrame | None,
    seed: Seed,
    st: EraSettings,
    years_of: YearCache | None,
    model_id: str,
    with_probe: bool = True,
) -> dict[str, Any]:
    """The whole split of one identity: the eras_manifest.json content (docs/eras.md)."""
    prep = prepare(faces, quality, seed.centroid, st)
    years, origin = resolve_years(prep.faces, quality, years_of)
    result = build_eras(identity, prep, years, st)
    eras = result.pop("eras")
    manifest: dict[str, Any] = {
        "version": MANIFEST_VERSION,
        "identity": identity,
        "model_id": model_id,
        "seed": {"spec": seed.spec, "manifest": seed.manifest, "faceset": seed.name},
        "settings": st.as_dict(),
        "stats": {
            **prep.counts,
            "year_origin": origin,
            **result,
            "eras": len(eras),
            "thin": sum(e["thin"] for e in eras),
        },
        "eras": eras,
    }
    if with_probe:
        manifest["probe"] = probe_report(prep, years, st)
    return manifest


def probe_identity(
    identity: str,
    faces: pd.DataFrame,
    quality: pd.DataFrame | None,
    seed: Seed,
    st: EraSettings,
    years_of: YearCache | None,
    model_id: str,
) -> dict[str, Any]:
    """The probe report of one identity (era-probe's OUT.json)."""
    prep = prepare(faces, quality, seed.centroid, st)
    years, origin = resolve_years(prep.faces, quality, years_of)
    report = probe_report(prep, years, st)
    report["year_origin"] = origin
    return {
        "version": MANIFEST_VERSION,
        "identity": identity,
        "model_id": model_id,
        "seed": {"spec": seed.spec, "manifest": seed.manifest, "faceset": seed.name},
        "settings": st.as_dict(),
        **report,
    }


def model_of(faces: pd.DataFrame, where: Sequence[str]) -> str:
    """The embedding model of the face tables (``load_faces`` checked there is one)."""
    models = sorted(set(faces["model_id"].dropna())) if len(faces) else []
    if not models:
        raise ValueError(f"face tables {', '.join(map(str, where))}: no faces, so no embedding model to split with")
    return models[0]


# --------------------------------------------------------------------------- export


EXPORT_MANIFEST = "manifest.json"
THIN_MARKER = "THIN.txt"


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
    return {**exp, "source": source, "identity": manifest["identity"], "eras_manifest": "eras_manifest.json"}
