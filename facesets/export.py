"""The ``export-swap`` stage: proposed face sets -> swap-ready crops and roop-unleashed bundles.

Per face set (an entry of a ``refine_manifest.json``, whatever produced it), in order:

1. tight outlier gate: faces farther than ``outlier_tight`` (profile: 0.45 buffalo_l, 0.42
   SFace) from the set's centroid are left out (roop averages every face: one stranger moves
   the identity);
2. ``min_face_short`` (100 px): smaller faces would be upscaled into blur;
3. composite quality score (docs/quality.md): 0.30·frontality + 0.20·det_score +
   0.20·symmetry + 0.15·face_size + 0.15·sharpness, each normalised to [0, 1];
4. visual-duplicate collapse: one face per near-duplicate group (dedup's
   ``duplicates.json``; the same photo resized, recompressed or lightly cropped), the best
   scored whose crop passes;
5. a single-face square crop of each (``facesets/crops.py``), re-detected in the written PNG
   with the backend's detector at roop's settings; a crop that cannot be made single-face is
   dropped and counted;
6. ``crops/0.png, 1.png, …`` in score order, ``<name>_top30.fsz`` and ``<name>_all.fsz``
   (``facesets/fsz.py``), ``manifest.json`` per set; a top-level ``manifest.json`` with the
   responsible-use note.

``--candidates``: singletons of the raw clusters close to a set (``candidate_distance``,
profile ``cluster``: 0.55 buffalo_l) with a composite score of at least 0.40 are cropped the
same way into ``_candidates/<set>/`` for a person to review.

Crops are cached by content (photo, box, other boxes, crop settings, detector) under a crop
cache folder, so a re-run after new photos only crops new faces; the cache is not an output.
Each set's ``crops/N.png`` is a hard link to its crop-cache file (a copy where links cannot be
made), and its bundles come from a bundle cache beside the crops (``<crop cache>/_bundles/<source>/``)
keyed by ``fsz.bundle_digest`` of the crops' cache keys in bundle order: a set whose members,
crop settings and detector did not change gets, as a hard link, the very file it had (same
inode, bytes and mtime), and only changed sets are written. The digest is in the set's entry
(``digest``), so the report can tell a changed set from an unchanged one without its pixels.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from facesets import thresholds
from facesets.atomic import staged_dir, write_json
from facesets.clustering import normalize
from facesets.crops import CropCache, CropJob, CropMeta, CropOptions, Cropper, Detector, RedetectCheck, crop_jobs
from facesets.fsz import BundleCache, bundle_digest
from facesets.links import link_or_copy
from facesets.manifests import (
    EXPORT_MANIFEST,
    SET_MANIFEST,
    ExportManifest,
    export_manifest,
    read_raw_manifest,
    read_refine_manifest,
)
from facesets.options import section
from facesets.quality import COMPONENTS, Norms, composite_score, norms_for, quality_components
from facesets.refine import align_quality
from facesets.tables import one_model, read_faces, read_quality

log = logging.getLogger(__name__)

CANDIDATES_DIR = "_candidates"
REJECTIONS = (
    "outlier_tight",
    "min_face_short",
    "duplicate",
    "bystander_unfixable",
    "crop_no_face",
    "crop_masks_larger_face",
    "crop_not_subject",
    "unreadable",
)


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class ExportOptions:
    """The ``export`` config section, resolved for a model (defaults: the schema; ``resolve_options``)."""

    outlier_tight: float
    subject_distance: float  # the crop's re-embedded face must be this close to the set (profile: outlier)
    candidate_distance: float
    min_face_short: float
    pad_ratio: float
    min_pad_ratio: float
    out_size: int
    top_n: int
    candidates: bool
    candidate_min_score: float
    weights: Mapping[str, float]
    redetect_size: int
    redetect_thresh: float
    workers: int

    @property
    def crop(self) -> CropOptions:
        return CropOptions(pad_ratio=self.pad_ratio, out_size=self.out_size, min_pad_ratio=self.min_pad_ratio)

    def settings(self) -> dict[str, Any]:
        s = asdict(self)
        s["weights"] = dict(self.weights)
        s.pop("workers")  # how fast, not what
        return s


def resolve_options(settings: Mapping[str, Any] | None, th: thresholds.ModelThresholds) -> ExportOptions:
    """Options from an ``export`` section (defaults filled); null distances from the model profile."""
    s = section("export", settings, "export settings")
    weights = {k: float(s["weights"][k]) for k in COMPONENTS}
    if not math.isclose(sum(weights.values()), 1.0, abs_tol=1e-6):
        raise ValueError(f"export.weights must sum to 1 (got {sum(weights.values()):.4f}: {weights})")
    return ExportOptions(
        outlier_tight=float(s["outlier_tight"]) if s["outlier_tight"] is not None else th.outlier_tight,
        subject_distance=th.outlier,
        candidate_distance=float(s["candidate_distance"]) if s["candidate_distance"] is not None else th.cluster,
        min_face_short=float(s["min_face_short"]),
        pad_ratio=float(s["pad_ratio"]),
        min_pad_ratio=float(s["min_pad_ratio"]),
        out_size=int(s["out_size"]),
        top_n=int(s["top_n"]),
        candidates=bool(s["candidates"]),
        candidate_min_score=float(s["candidate_min_score"]),
        weights=weights,
        redetect_size=int(s["redetect_size"]),
        redetect_thresh=float(s["redetect_thresh"]),
        workers=int(s["workers"]) or (os.cpu_count() or 1),
    )


# --------------------------------------------------------------------------- the detector check


def make_detector(
    backend: str,
    embed_settings: Mapping[str, Any] | None,
    opts: ExportOptions,
    model_dir: Path | None,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> tuple[Detector, str]:
    """The backend's detector at roop's settings (``redetect_size``, ``redetect_thresh``) and its id."""
    from facesets.analyzers import create_analyzer
    from facesets.config import load_schema, validate

    s = dict(embed_settings or {})
    s["det_size"] = opts.redetect_size
    s[backend] = {**dict(s.get(backend, {})), "det_thresh": opts.redetect_thresh}
    s = validate(s, load_schema("config")["properties"]["embed"], "export re-detection settings")
    analyzer = create_analyzer(backend, s, providers=providers, model_dir=model_dir)
    if backend == "insightface":  # already the pack's SCRFD, as roop runs it
        return RedetectCheck(analyzer.detect, analyzer.embed), analyzer.model_id
    from facesets.analyzers.insightface import with_pack_detector  # + SCRFD when a pack is on disk

    detect, detector_id = with_pack_detector(
        analyzer.detect, analyzer.model_id, s["insightface"], providers, opts.redetect_size, opts.redetect_thresh
    )
    return RedetectCheck(detect, analyzer.embed), detector_id  # its recognizer checks who the crop shows


def backend_of(model_id: str) -> str:
    if model_id.startswith("opencv"):
        return "opencv"
    if model_id.startswith("insightface"):
        return "insightface"
    raise ValueError(f"cannot tell the backend of model {model_id!r}; pass --backend")


# --------------------------------------------------------------------------- face sets


REASON_OF_REFUSAL = {
    "bystander": "bystander_unfixable",
    "no_face": "crop_no_face",
    "larger_face": "crop_masks_larger_face",
    "unreadable": "unreadable",
}


def safe_name(name: str) -> str:
    """An ASCII file-name-safe set name (faceset_001 stays as it is)."""
    from facesets.library import safe_label

    return safe_label(name)


@dataclass
class Scored:
    """Per face (indexed by face_key): embedding, quality components, score, face_short."""

    emb: pd.Series
    components: pd.DataFrame
    score: pd.Series
    short: pd.Series


def score_faces(faces: pd.DataFrame, quality: pd.DataFrame | None, opts: ExportOptions) -> Scored:
    q = align_quality(faces, quality)
    comps = quality_components(faces, q, norms_for(opts.out_size, opts.pad_ratio))
    keys = faces["face_key"].to_numpy()
    return Scored(
        emb=pd.Series(list(normalize(np.stack(faces["embedding"].to_numpy()))) if len(faces) else [], index=keys),
        components=comps,
        score=pd.Series(composite_score(comps, opts.weights) if len(faces) else [], index=keys, dtype=np.float64),
        short=pd.Series(q["face_short"].to_numpy(np.float64), index=keys),
    )


def _r(v: float, n: int = 4) -> float:
    return round(float(v), n)


def select_crops(
    entries: Sequence[Mapping[str, Any]],
    faces: pd.DataFrame,
    scored: Scored,
    groups: Mapping[str, str],
    opts: ExportOptions,
    cropper: Cropper,
) -> tuple[list[list[str]], list[dict[str, str]], dict[str, CropMeta]]:
    """Per entry: the exported face keys (score order) and every member's outcome; the crops made."""
    jobs_all = crop_jobs(faces, [m["face_key"] for e in entries for m in e["members"]])
    crop_meta: dict[str, CropMeta] = {}
    outcome: list[dict[str, str]] = []
    queues: dict[tuple[int, str], list[str]] = {}
    cents: dict[int, np.ndarray] = {}
    for i, e in enumerate(entries):
        keys = [m["face_key"] for m in e["members"]]
        missing = [k for k in keys if k not in scored.score.index]
        if missing:
            raise ValueError(
                f"face set {e['name']}: {len(missing)} member(s) not in the face table (e.g. {missing[0]})"
            )
        emb = np.stack(scored.emb.loc[keys].to_numpy()) if keys else np.zeros((0, 1))
        c = np.asarray(e["centroid"], np.float64) if e.get("centroid") else emb.sum(0)
        c = normalize(c[None])[0]
        cents[i] = c
        dist = 1.0 - emb @ c if keys else np.zeros(0)
        res: dict[str, str] = {}
        alive = []
        for k, d in zip(keys, dist, strict=True):
            if d > opts.outlier_tight:
                res[k] = "outlier_tight"
            elif not scored.short[k] >= opts.min_face_short:
                res[k] = "min_face_short"
            else:
                alive.append(k)
        alive.sort(key=lambda k: (-scored.score[k], k))
        for k in alive:
            sha = jobs_all[k].sha256
            queues.setdefault((i, groups.get(sha, sha)), []).append(k)
        outcome.append(res)
    # rounds: the best untried face of every unresolved group; the next one only if it fails
    while queues:
        heads = {g: q.pop(0) for g, q in queues.items()}
        results = cropper.run([jobs_all[k] for k in heads.values()])
        for g, k in heads.items():
            r = results[k]
            crop_meta[k] = r
            if (
                r.ok
                and r.embedding is not None
                and 1.0 - float(np.asarray(r.embedding) @ cents[g[0]]) > (opts.subject_distance)
            ):
                outcome[g[0]][k] = "crop_not_subject"  # the one face in the crop is someone else
            elif r.ok:
                outcome[g[0]][k] = "exported"
                for rest in queues[g]:
                    outcome[g[0]][rest] = "duplicate"
                queues[g] = []
            else:
                outcome[g[0]][k] = REASON_OF_REFUSAL[r.reason or "no_face"]
        queues = {g: q for g, q in queues.items() if q}
    chosen = [
        sorted((k for k, o in res.items() if o == "exported"), key=lambda k: (-scored.score[k], k)) for res in outcome
    ]
    return chosen, outcome, crop_meta


def export_facesets(
    entries: Sequence[Mapping[str, Any]],
    faces: pd.DataFrame,
    quality: pd.DataFrame | None,
    groups: Mapping[str, str],
    out_dir: Path,
    settings: Mapping[str, Any] | None,
    detector: Detector,
    detector_id: str = "",
    crop_cache: Path | None = None,
    source: str = "",
    bundles: BundleCache | None = None,
) -> ExportManifest:
    """Crops, bundles and per-set manifests of these face-set entries into ``out_dir`` (not swapped:
    the caller owns the folder). Returns the manifest (without candidates); writes no top-level file.

    ``entries``: refine_manifest "facesets" items (extra fields such as kind/label/route_to/marker
    are copied through; ``marker`` names a provenance file written into the set's folder).
    ``groups``: image sha256 -> near-duplicate group id (``facesets.dedup.image_groups``).
    ``detector``: the re-detection check (``make_detector``); ``detector_id`` keys the crop cache.
    ``bundles``: where finished bundles are kept (None: ``bundle_cache(crop_cache, source)``); the
    caller prunes it once the folder is in place (``run_export``), or never (nothing is lost).
    """
    model_id = one_model(faces, f"face sets of {source or 'the export'}", "exported")
    th = thresholds.for_model(model_id) if model_id else thresholds.ARCFACE
    opts = resolve_options(settings, th)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [safe_name(e["name"]) for e in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"face set names collide after making them file-name safe: {sorted(names)}")
    scored = score_faces(faces, quality, opts)
    own_cache = bundles is None  # then pruned here; run_export prunes its own after the swap
    bundles = bundle_cache(crop_cache, source) if bundles is None else bundles
    with tempfile.TemporaryDirectory(prefix=".tmp-crops.", dir=out_dir) as scratch:
        cropper = Cropper(detector, detector_id, opts.crop, CropCache(Path(crop_cache or scratch)), opts.workers)
        chosen, outcome, crop_meta = select_crops(entries, faces, scored, groups, opts, cropper)
        jobs = crop_jobs(faces, [k for c in chosen for k in c])
        paths = dict(zip(faces["face_key"], faces["path"], strict=True))
        out_entries, empty = [], []
        rejected = dict.fromkeys(REJECTIONS, 0)
        for e, name, keys, res in zip(entries, names, chosen, outcome, strict=True):
            for o in res.values():
                if o != "exported":
                    rejected[o] += 1
            if not keys:
                empty.append(name)
                continue
            out_entries.append(
                _write_set(e, name, keys, res, jobs, crop_meta, scored, paths, cropper, opts, out_dir, source, bundles)
            )
    n_crops = sum(len(e["crops"]) for e in out_entries)
    if own_cache:
        bundles.prune()  # the outputs hold their own links: nothing they use is lost
    log.info(
        "export: %d face sets, %d crops (%d made, %d from the cache), %d bundles written, %d unchanged;"
        " rejected %s; empty sets %s",
        len(out_entries),
        n_crops,
        cropper.made,
        cropper.reused,
        bundles.written,
        bundles.reused,
        rejected,
        empty,
    )
    manifest = export_manifest(
        source,
        model_id,
        out_entries,
        settings={**opts.settings(), "thresholds_profile": th.name, "detector": detector_id},
        stats={"facesets": len(out_entries), "crops": n_crops, "rejected": rejected, "empty_facesets": empty},
    )
    # Every file here is written once under its name and never rewritten in place (crops are
    # links to the crop cache's immutable files): the library may hard-link them (merge.py).
    manifest["immutable_files"] = True
    return manifest


def _write_set(
    e: Mapping[str, Any],
    name: str,
    keys: list[str],
    outcome: Mapping[str, str],
    jobs: Mapping[str, CropJob],
    crop_meta: Mapping[str, CropMeta],
    scored: Scored,
    paths: Mapping[str, str],
    cropper: Cropper,
    opts: ExportOptions,
    out_dir: Path,
    source: str,
    bundles: BundleCache,
) -> dict[str, Any]:
    d = out_dir / name
    (d / "crops").mkdir(parents=True, exist_ok=True)
    crops, files = [], []
    for i, k in enumerate(keys):
        dest = d / "crops" / f"{i}.png"
        link_or_copy(cropper.png(jobs[k]), dest)  # the crop cache's bytes, stored once
        files.append(dest)
        crops.append(
            {
                "file": f"{name}/crops/{i}.png",
                "face_key": k,
                "sha256": jobs[k].sha256,
                "source_path": paths[k],
                "bbox": list(jobs[k].bbox),
                "score": _r(scored.score[k]),
                "components": {c: _r(scored.components.at[k, c]) for c in COMPONENTS},
                "crop": crop_meta[k].as_dict(),
            }
        )
    top = f"{name}/{name}_top{opts.top_n}.fsz"
    full = f"{name}/{name}_all.fsz"
    content = [jobs[k].cache_key(cropper.crop, cropper.detector_id) for k in keys]
    digest = bundle_digest(content)
    bundles.place(out_dir / top, bundle_digest(content[: opts.top_n]), files[: opts.top_n])
    bundles.place(out_dir / full, digest, files)
    emb = np.stack(scored.emb.loc[keys].to_numpy())
    counts = {r: sum(1 for o in outcome.values() if o == r) for r in REJECTIONS}
    entry = {k: v for k, v in e.items() if k not in ("members", "centroid", "faces", "unique_images", "name")}
    entry.update(
        {
            "name": name,
            "dir": name,
            "faces": len(keys),
            "unique_images": len({jobs[k].sha256 for k in keys}),
            "refine_faces": len(e["members"]),
            "rejected": counts,
            "centroid": [round(float(v), 6) for v in normalize(emb.sum(0, keepdims=True))[0]],
            "bundles": {"top": top, "all": full},
            "digest": digest,  # of the crops in bundle order (fsz.bundle_digest): equal digest, equal bytes
            "crops": crops,
        }
    )
    if e.get("marker"):
        line = f"source: {source}; face set: {e['name']}; kind: {e.get('kind', 'discovered')}\n"
        (d / safe_name(str(e["marker"]))).write_text(line, encoding="utf-8")
    write_json(d / SET_MANIFEST, entry)
    return entry


# --------------------------------------------------------------------------- candidates


def export_candidates(
    singles: Sequence[str],
    faces: pd.DataFrame,
    scored: Scored,
    sets: Sequence[Mapping[str, Any]],
    opts: ExportOptions,
    cropper: Cropper,
    out_dir: Path,
) -> list[dict[str, Any]]:
    """Singletons near an exported set, cropped into ``_candidates/<set>/N.png`` (score order)."""
    singles = [k for k in singles if k in scored.score.index]
    if not singles or not sets:
        return []
    cents = normalize(np.stack([np.asarray(s["centroid"], np.float64) for s in sets]))
    emb = np.stack(scored.emb.loc[singles].to_numpy())
    d = 1.0 - emb @ cents.T
    near = d.argmin(1)
    dist = d[np.arange(len(singles)), near]
    pick = [
        i
        for i, k in enumerate(singles)
        if dist[i] <= opts.candidate_distance
        and scored.score[k] >= opts.candidate_min_score
        and scored.short[k] >= opts.min_face_short
    ]
    jobs = crop_jobs(faces, [singles[i] for i in pick])
    results = cropper.run([jobs[singles[i]] for i in pick])
    per_set: dict[str, list[int]] = {}
    for i in pick:
        if results[singles[i]].ok:
            per_set.setdefault(sets[near[i]]["name"], []).append(i)
    by_key = faces.set_index("face_key")
    out = []
    for name in sorted(per_set):
        rows = sorted(per_set[name], key=lambda i: (-scored.score[singles[i]], singles[i]))
        folder = out_dir / CANDIDATES_DIR / name
        folder.mkdir(parents=True, exist_ok=True)
        for n, i in enumerate(rows):
            k = singles[i]
            link_or_copy(cropper.png(jobs[k]), folder / f"{n}.png")
            out.append(
                {
                    "file": f"{CANDIDATES_DIR}/{name}/{n}.png",
                    "face_key": k,
                    "sha256": jobs[k].sha256,
                    "source_path": by_key.at[k, "path"],
                    "nearest": name,
                    "distance": _r(dist[i]),
                    "score": _r(scored.score[k]),
                    "components": {c: _r(scored.components.at[k, c]) for c in COMPONENTS},
                    "crop": results[k].as_dict(),
                }
            )
    return out


def raw_singletons(raw_manifest: Path) -> list[str]:
    raw = read_raw_manifest(raw_manifest)
    return sorted(f["face_key"] for f in raw["faces"] if f.get("cluster") == "_singletons")


# --------------------------------------------------------------------------- the command


BUNDLES_DIR = "_bundles"  # inside the crop cache: the bundles made of its crops, one folder per source


def bundle_cache(crop_cache: Path | None, source: str) -> BundleCache:
    """The bundle cache of ``source``'s exports: ``<crop cache>/_bundles/<source>/`` (none without a crop cache)."""
    if crop_cache is None:
        return BundleCache(None)
    return BundleCache(Path(crop_cache) / BUNDLES_DIR / safe_name(source or "export"))


def run_export(
    faces_path: Path,
    refine_manifest: Path,
    out: Path,
    settings: Mapping[str, Any] | None,
    detector_factory: Callable[[ExportOptions, str], tuple[Detector, str]],
    raw_manifest: Path | None = None,
    candidates: bool | None = None,
    quality: Path | None = None,
    duplicates: Path | None = None,
    crop_cache: Path | None = None,
) -> dict[str, Any]:
    """``facesets export-swap FACES REFINE_MANIFEST OUT``: the whole export folder, swapped in atomically.

    ``detector_factory(opts, model_id)`` builds the re-detection check (``make_detector``).
    A raw-cluster manifest given as ``refine_manifest`` (or anything else) fails by name first.
    """
    ref = read_refine_manifest(refine_manifest)
    if raw_manifest is not None:
        read_raw_manifest(raw_manifest)  # a wrong file fails now, not after the crops
    faces = read_faces(faces_path)
    model_id = ref.get("model_id") or one_model(faces, [faces_path], "exported")
    th = thresholds.for_model(model_id) if model_id else thresholds.ARCFACE
    opts = resolve_options(settings, th)
    want_candidates = opts.candidates if candidates is None else candidates
    if want_candidates and raw_manifest is None:
        raise ValueError("--candidates needs --raw-manifest (the raw clusters' manifest.json)")
    if quality is None:
        log.warning("export: no quality table given; symmetry and sharpness count as %.1f", Norms.neutral)
    q = read_quality(quality) if quality is not None else None
    groups: dict[str, str] = {}
    if duplicates is not None:
        from facesets.dedup import image_groups

        try:
            groups = dict(image_groups(duplicates))
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"{duplicates}: cannot read the duplicates report from `facesets dedup`: {exc}") from None
    else:
        log.warning("export: no duplicates report given; near-duplicate photos are not collapsed")
    detect, detector_id = detector_factory(opts, model_id)
    bundles = bundle_cache(crop_cache, ref.get("source", ""))
    with staged_dir(out) as tmp:
        manifest = export_facesets(
            ref["facesets"],
            faces,
            q,
            groups,
            tmp,
            settings,
            detect,
            detector_id,
            crop_cache,
            ref.get("source", ""),
            bundles,
        )
        cands: list[dict[str, Any]] = []
        if want_candidates:
            scored = score_faces(faces, q, opts)
            members = {m["face_key"] for e in ref["facesets"] for m in e["members"]}
            singles = [k for k in raw_singletons(raw_manifest) if k not in members]
            with tempfile.TemporaryDirectory(prefix=".tmp-crops.", dir=tmp) as scratch:
                cropper = Cropper(detect, detector_id, opts.crop, CropCache(Path(crop_cache or scratch)), opts.workers)
                cands = export_candidates(singles, faces, scored, manifest["facesets"], opts, cropper, tmp)
        manifest = {
            **manifest,
            "source": ref.get("source", ""),
            "model_id": model_id,
            "refine_manifest": str(refine_manifest),
            "stats": {**manifest["stats"], "candidates": len(cands)},
            "candidates": cands,
        }
        manifest["settings"]["candidates"] = want_candidates
        write_json(tmp / EXPORT_MANIFEST, manifest)
    bundles.prune()  # after the swap: a run stopped before it leaves the entries for the next run to link
    return manifest
