"""The ``enrich`` stage: per-face quality facts -> ``quality.parquet`` (schema.QUALITY).

For every face of a face table: ``face_short`` (short edge of the box), ``blur`` (variance of
the Laplacian on the face aligned to 112x112), ``det_score``, ``symmetry`` of the 5 keypoints
and head pose (facesets/pose.py), the EXIF capture year and, for the insightface backend,
the pack's landmark_2d_106 / landmark_3d_68 and its pose (facesets/analyzers/landmarks.py).

Blur: the photo is re-read (EXIF-oriented, facesets/imageio.py) at a resolution where the
smallest face of the photo still has ``DECODE_FACE_PX`` pixels (or in full), the face is
warped to the ArcFace template at 112x112 by a similarity transform of its 5 keypoints;
when that shrinks the face, the surrounding region is first downsampled with area averaging
so the measure sees the face's detail, not resampling aliasing. ``blur`` is the variance of
``cv2.Laplacian`` (3x3 aperture) of the aligned crop in 8-bit grey levels: high = sharp.

EXIF year: the capture time that stage read from the photo's header (the image records'
``capture_time``) when there is one; otherwise the photo's EXIF is read with piexif
(DateTimeOriginal, then DateTimeDigitized, then DateTime; HEIC/HEIF through pillow-heif).

Re-running computes only missing rows: results are cached per ``face_key`` in immutable
segments under ``<cache_dir>/<model_id>/<method id>/`` (facesets/segcache.py). Faces whose
photo cannot be read now get NaN blur and are not cached, so they are retried next run.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from facesets import imageio, pose, schema
from facesets.analyzers.base import ARCFACE_TEMPLATE, settings_id, umeyama
from facesets.embed import sidecar_paths
from facesets.options import build, section, threads
from facesets.segcache import SegmentCache
from facesets.tables import one_model, read_faces, read_quality

log = logging.getLogger(__name__)

ENRICH_VERSION = 1  # bump when a computed value changes meaning: a new cache folder
ALIGN_SIZE = 112
DECODE_FACE_PX = 224  # decode so the smallest face keeps this many pixels (2x the aligned size)
DATE_TAGS = (("Exif", 0x9003), ("Exif", 0x9004), ("0th", 0x0132))  # DateTimeOriginal, -Digitized, DateTime


@dataclass(frozen=True)
class EnrichOptions:
    """What an enrich run needs; no defaults here: ``enrich_options`` fills them from the schema."""

    workers: int  # 0 = the machine's threads (facesets.options.threads)
    batch_faces: int
    landmarks: bool  # insightface backend: run the pack's landmark models
    max_pixels: int  # the embed section's decompression-bomb guard: enrich re-reads the same photos


def enrich_options(
    enrich: Mapping[str, Any] | None = None, embed: Mapping[str, Any] | None = None, **override: Any
) -> EnrichOptions:
    """Options from an ``enrich`` section and the ``embed`` section's ``max_pixels`` (both with
    the schema's defaults filled in); ``override`` sets fields the caller resolved."""
    return build(EnrichOptions, "enrich", enrich, **{"max_pixels": section("embed", embed)["max_pixels"], **override})


@dataclass
class EnrichStats:
    faces: int = 0  # rows written
    computed: int = 0  # faces computed in this run (the rest came from the cache)
    cached: int = 0
    unreadable: int = 0  # faces whose photo could not be read now (blur NaN, not cached)
    photos_read: int = 0
    pose_insightface: int = 0
    pose_kps5: int = 0
    seconds: float = 0.0
    model_id: str = ""


# ---------------------------------------------------------------- pure per-face measures


def aligned_face(rgb: np.ndarray, kps: np.ndarray, size: int = ALIGN_SIZE) -> np.ndarray:
    """The face warped to the ArcFace template (size x size), area-averaged when shrinking."""
    kps = np.asarray(kps, np.float64).reshape(5, 2)
    dst = ARCFACE_TEMPLATE * (size / 112.0)
    m = umeyama(kps, dst)
    scale = math.sqrt(abs(np.linalg.det(m[:, :2])))
    if scale < 0.95:
        # downsample a region around the face first (area averaging), then warp at ~1:1
        span = np.ptp(kps, axis=0).max() * 2.0 + 8
        cx, cy = kps.mean(0)
        h, w = rgb.shape[:2]
        x0, y0 = max(0, int(cx - span)), max(0, int(cy - span))
        x1, y1 = min(w, int(cx + span) + 1), min(h, int(cy + span) + 1)
        roi = rgb[y0:y1, x0:x1]
        nw, nh = max(1, round(roi.shape[1] * scale)), max(1, round(roi.shape[0] * scale))
        small = cv2.resize(roi, (nw, nh), interpolation=cv2.INTER_AREA)
        kps = (kps - [x0, y0]) * [nw / roi.shape[1], nh / roi.shape[0]]
        rgb = small
        m = umeyama(kps, dst)
    return cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def laplacian_variance(rgb: np.ndarray) -> float:
    """Variance of the 3x3 Laplacian of the grey image (8-bit levels): the blur measure."""
    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F, ksize=1).var())


def year_of(value: object) -> int | None:
    """The year of an EXIF ``YYYY:MM:DD ...`` or ISO ``YYYY-MM-DD...`` date, if plausible."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "ignore")
    if not isinstance(value, str) or len(value) < 4 or not value[:4].isdigit():
        return None
    year = int(value[:4])
    return year if 1826 <= year <= 2200 else None  # 1826: the oldest surviving photograph


def read_exif_year(path: str) -> int | None:
    """Capture year from the file's EXIF with piexif (HEIC/HEIF via pillow-heif); None if absent."""
    import piexif

    try:
        if imageio.pillow_heif is not None and imageio.pillow_heif.is_supported(path):
            raw = imageio.pillow_heif.open_heif(path).info.get("exif")
            if not raw:
                return None
            exif = piexif.load(raw)
        else:
            exif = piexif.load(path)
    except Exception:  # noqa: BLE001 - no or broken EXIF, or a format piexif does not read
        return None
    for ifd, tag in DATE_TAGS:
        year = year_of(exif.get(ifd, {}).get(tag))
        if year is not None:
            return year
    return None


# ---------------------------------------------------------------- per photo


@dataclass(frozen=True)
class PhotoJob:
    sha256: str
    paths: tuple[str, ...]  # canonical path, then aliases
    width: int
    height: int
    capture_time: str | None
    faces: tuple  # rows of the face table (namedtuples)


def _decode_any(job: PhotoJob, target: int, max_pixels: int) -> imageio.Decoded:
    err: imageio.ImageLoadError | None = None
    for p in job.paths:
        try:
            return imageio.decode(p, target_long_side=target, max_pixels=max_pixels)
        except imageio.ImageLoadError as exc:
            err = err or exc
    raise err or imageio.ImageLoadError("no path")


def _base_row(f, year: int | None) -> dict:
    kps = np.asarray(f.kps, np.float64).reshape(5, 2)
    return {
        "face_key": f.face_key,
        "face_short": pose.face_short(f.x1, f.y1, f.x2, f.y2),
        "blur": math.nan,
        "det_score": float(f.det_score),
        "symmetry": pose.symmetry(kps),
        "pitch": math.nan,
        "yaw": math.nan,
        "roll": math.nan,
        "pose_source": "kps5_pnp",
        "exif_year": year,
        "landmark_2d_106": None,
        "landmark_3d_68": None,
    }


def _set_kps5_pose(row: dict, f, width: int, height: int) -> None:
    p = pose.estimate_pose(np.asarray(f.kps, np.float64).reshape(5, 2), width, height)
    row.update(pitch=p.pitch, yaw=p.yaw, roll=p.roll, pose_source="kps5_pnp")


def enrich_photo(job: PhotoJob, landmarker, opts: EnrichOptions) -> tuple[list[dict], bool]:
    """Quality rows for one photo's faces. Returns (rows, cacheable); never raises on a bad photo."""
    year = year_of(job.capture_time)
    rows = [_base_row(f, year) for f in job.faces]
    try:
        smallest = max(1.0, min(r["face_short"] for r in rows))
        target = math.ceil(max(job.width, job.height) * min(1.0, DECODE_FACE_PX / smallest))
        dec = _decode_any(job, target, opts.max_pixels)
        if (dec.meta.width, dec.meta.height) != (job.width, job.height):
            raise imageio.ImageLoadError(
                f"photo is {dec.meta.width}x{dec.meta.height} now, {job.width}x{job.height} in the face table"
            )
    except imageio.ImageLoadError as exc:
        log.warning("enrich: %s: %s (blur left empty, retried next run)", job.paths[0], exc)
        for row, f in zip(rows, job.faces, strict=True):
            _set_kps5_pose(row, f, job.width, job.height)
        return rows, False
    if year is None:
        year = read_exif_year(job.paths[0])
    for row, f in zip(rows, job.faces, strict=True):
        row["exif_year"] = year
        kps = np.asarray(f.kps, np.float64).reshape(5, 2) / dec.scale
        row["blur"] = laplacian_variance(aligned_face(dec.rgb, kps))
        lm = None
        if landmarker is not None:
            box = np.array([f.x1, f.y1, f.x2, f.y2], np.float64) / dec.scale
            lm = landmarker.run(dec.rgb, box)
            if lm.landmark_2d_106 is not None:
                row["landmark_2d_106"] = (lm.landmark_2d_106 * dec.scale).reshape(-1).astype(np.float32)
            if lm.landmark_3d_68 is not None:
                row["landmark_3d_68"] = (lm.landmark_3d_68 * dec.scale).reshape(-1).astype(np.float32)
        if lm is not None and lm.pose is not None:
            row.update(pitch=lm.pose[0], yaw=lm.pose[1], roll=lm.pose[2], pose_source="insightface")
        else:
            _set_kps5_pose(row, f, job.width, job.height)
    return rows, True


# ---------------------------------------------------------------- the stage


def method_id(opts: EnrichOptions, landmarks_used: bool) -> str:
    """Names every setting that changes enrich's values (the cache sub-folder)."""
    return settings_id("enrich", {"version": ENRICH_VERSION, "landmarks": landmarks_used, "align": ALIGN_SIZE})


def photo_jobs(faces: pd.DataFrame, images: pd.DataFrame | None) -> list[PhotoJob]:
    capture = {}
    if images is not None and len(images):
        capture = dict(zip(images["sha256"], images["capture_time"], strict=True))
    jobs = []
    for sha, g in faces.groupby("sha256", sort=False):
        first = g.iloc[0]
        aliases = list(first["aliases"]) if first["aliases"] is not None else []
        ct = capture.get(sha)
        jobs.append(
            PhotoJob(
                sha256=sha,
                paths=(first["path"], *aliases),
                width=int(first["img_width"]),
                height=int(first["img_height"]),
                capture_time=ct if isinstance(ct, str) else None,
                faces=tuple(g.itertuples(index=False)),
            )
        )
    return jobs


def _windowed(pool: ThreadPoolExecutor, fn: Callable, items: Sequence, ahead: int) -> Iterator:
    pending: deque[Future] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def make_landmarker(model_id: str, opts: EnrichOptions, insightface_settings: dict | None, providers: Sequence[str]):
    """The insightface pack's landmark models when the face table came from that backend."""
    if not opts.landmarks or not model_id.startswith("insightface-"):
        return None
    from facesets.analyzers.landmarks import InsightFaceLandmarks

    s = section("embed", {"insightface": dict(insightface_settings or {})})["insightface"]
    lm = InsightFaceLandmarks(s["pack"], s["root"], providers)
    return lm if lm.available else None


def enrich_table(
    faces_path: Path,
    out: Path,
    cache_dir: Path,
    opts: EnrichOptions,
    images_path: Path | None = None,
    insightface_settings: dict | None = None,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> EnrichStats:
    """``facesets enrich CACHE``: the quality table of a face table, computing only missing faces."""
    t0 = time.monotonic()
    faces = read_faces(faces_path)
    images_path = images_path or sidecar_paths(Path(faces_path))[0]
    images = schema.read_table(images_path, ["sha256", "capture_time"]) if Path(images_path).exists() else None
    model_id = one_model(faces, str(faces_path), "enriched") or "none"
    landmarker = make_landmarker(model_id, opts, insightface_settings, providers)
    cache = SegmentCache(
        Path(cache_dir) / model_id / method_id(opts, landmarker is not None), schema.QUALITY, "face_key"
    )
    cached = cache.load(faces["face_key"]) if len(faces) else schema.QUALITY.empty_table().to_pandas()
    todo = faces[~faces["face_key"].isin(set(cached["face_key"]))]
    jobs = photo_jobs(todo, images)
    log.info(
        "enrich: %d faces, %d cached, %d to compute from %d photos (model %s, landmarks %s)",
        len(faces), len(cached), len(todo), len(jobs), model_id, "insightface" if landmarker else "none",
    )  # fmt: skip
    stats = EnrichStats(faces=len(faces), cached=len(cached), computed=len(todo), model_id=model_id)
    computed: list[dict] = []
    batch: list[dict] = []
    cv2.setNumThreads(1)
    workers = threads(opts.workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for rows, cacheable in _windowed(
            pool, lambda j: enrich_photo(j, landmarker, opts), jobs, ahead=max(2, workers * 4)
        ):
            computed.extend(rows)
            stats.photos_read += int(cacheable)
            if cacheable:
                batch.extend(rows)
            else:
                stats.unreadable += len(rows)
            if len(batch) >= opts.batch_faces:
                cache.add(pd.DataFrame(batch))
                batch = []
        if batch:
            cache.add(pd.DataFrame(batch))
    parts = [p for p in (cached, pd.DataFrame(computed, columns=schema.QUALITY.names)) if len(p)]
    quality = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=schema.QUALITY.names)
    order = {k: i for i, k in enumerate(faces["face_key"])}
    quality = quality.sort_values("face_key", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)
    quality["exif_year"] = pd.array(quality["exif_year"], dtype="Int16")
    schema.write_table(quality, schema.QUALITY, out)
    src = quality["pose_source"]
    stats.pose_insightface = int((src == "insightface").sum())
    stats.pose_kps5 = int((src == "kps5_pnp").sum())
    stats.seconds = round(time.monotonic() - t0, 3)
    log.info("enrich: %s", asdict(stats))
    return stats


def load_quality(path: str | Path) -> pd.DataFrame:
    """A quality table indexed by ``face_key`` (facesets.tables.read_quality, the one reader)."""
    return read_quality(path)
