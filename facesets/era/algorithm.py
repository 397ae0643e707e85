"""The era split itself (docs/eras.md): a pure function of faces, quality, years, seed and settings."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from facesets.clustering import centroids, cluster_faces, normalize
from facesets.era.readers import YearCache, resolve_years
from facesets.era.seed import Seed
from facesets.era.settings import EraSettings
from facesets.manifests import VERSION
from facesets.refine import quality_gate

log = logging.getLogger("facesets.era")


MANIFEST_VERSION = VERSION  # eras_manifest.json (facesets/manifests.py)


HIST_EDGES = (*(round(0.05 * i, 2) for i in range(21)), 2.0)  # cosine distance bins; last: >= 1.0


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


def _header(identity: str, model_id: str, seed: Seed, st: EraSettings) -> dict[str, Any]:
    """What the eras manifest and the probe report both start with."""
    return {
        "version": MANIFEST_VERSION,
        "identity": identity,
        "model_id": model_id,
        "seed": {"spec": seed.spec, "manifest": seed.manifest, "faceset": seed.name},
        "settings": st.as_dict(),
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
        **_header(identity, model_id, seed, st),
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
        **_header(identity, model_id, seed, st),
        **report,
    }
