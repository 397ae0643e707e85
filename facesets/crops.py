"""Single-face square crops for face-swap bundles.

A crop is the face box's centre, a square of side ``max(w, h) · (1 + 2 · pad_ratio)`` in
original (oriented) pixels, resized to ``out_size``; parts outside the photo are black (as
roop letterboxes). With the defaults (pad 0.5, 512 px) the face fills about half the crop,
which detects reliably.

roop adds *every* face it detects in a PNG to the set, so a crop must hold exactly one
detectable face. ``single_face_crop`` makes sure of it:

1. Other faces of the photo (the face table's other detections) that reach into the padded
   square are dealt with first: if a padding at least halfway between ``min_pad_ratio`` and
   ``pad_ratio`` leaves them out, the crop is simply tighter ("shrunk"); otherwise they are
   masked at the full padding: their box, grown by ``mask_margin``, is filled with its mean
   colour, never touching the target's own box (the tighter clean crop is the next try).
2. The PNG is encoded, decoded again the way roop does (OpenCV, 8-bit, 3 channels) and run
   through the detector (the caller passes the backend's detector at roop's settings, 640 px,
   threshold 0.5). Extra faces it finds are masked too and the check repeats (a few rounds).
3. If the target is lost or extras remain, the next smaller padding is tried; when nothing
   works the crop is refused with the reason (``bystander`` or ``no_face``).
4. A face larger than the target is never masked (the target may be a false detection next
   to the real face, on a painting or a poster): a padding that would need it is skipped, and
   when no padding leaves it out the crop is refused (``larger_face``).
5. When the detector carries the backend's recognizer (``RedetectCheck``), the re-detected
   target is embedded too, so export can refuse a crop whose one face is not the subject.

Everything down to ``single_face_crop`` is a pure function of its inputs (no state, no I/O
besides the codec). Below it, the crop machinery of export-swap and era-split: a ``CropJob``
per face-table row (the photo, its box, the other boxes), a content-keyed ``CropCache`` of
finished crops (a re-run after new photos crops only new faces) and a ``Cropper`` that makes
the missing ones in a thread pool.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from facesets import imageio
from facesets.analyzers.base import Detection
from facesets.atomic import write_bytes, write_json

log = logging.getLogger(__name__)

Detector = Callable[[np.ndarray], list[Detection]]  # RGB uint8 -> detections in its pixels
CROP_VERSION = 2  # bump when this module changes what a crop looks like: the crop cache is keyed by it
MATCH_IOU = 0.3  # a re-detected face is the target when its box overlaps the expected one this much


@dataclass(frozen=True)
class CropOptions:
    """Crop geometry: ``pad_ratio``, ``out_size``, ``min_pad_ratio`` come from the ``export`` config
    section (``ExportOptions.crop``); the rest are this module's tuning constants."""

    pad_ratio: float
    out_size: int
    min_pad_ratio: float  # never tighter than this when shrinking around bystanders
    pad_steps: int = 3  # paddings tried between pad_ratio and min_pad_ratio when masking fails
    mask_margin: float = 0.15  # a bystander's box grows by this fraction per side before masking
    max_rounds: int = 3  # re-detect / mask rounds per padding


@dataclass(frozen=True)
class SquareBox:
    """A square region in original pixels (may extend past the photo)."""

    x0: float
    y0: float
    side: float

    @property
    def xyxy(self) -> np.ndarray:
        return np.array([self.x0, self.y0, self.x0 + self.side, self.y0 + self.side], np.float64)


@dataclass(frozen=True)
class CropResult:
    png: bytes | None  # None when refused
    pad_ratio: float  # the padding used (or last tried)
    mode: str  # clean | shrunk | masked | refused
    masked: int  # faces masked
    reason: str | None = None  # why refused: bystander | no_face | larger_face
    face: Detection | None = None  # the re-detected target in the crop's pixels (when made)


def square_box(bbox: Sequence[float], pad_ratio: float) -> SquareBox:
    """The padded square around a face box, centred on it."""
    x1, y1, x2, y2 = map(float, bbox)
    side = max(x2 - x1, y2 - y1) * (1.0 + 2.0 * pad_ratio)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    return SquareBox(cx - side / 2, cy - side / 2, side)


def to_crop_coords(bbox: Sequence[float], box: SquareBox, out_size: int) -> np.ndarray:
    """A box in original pixels -> in the crop's pixels."""
    k = out_size / box.side
    b = np.asarray(bbox, np.float64)
    return np.array([(b[0] - box.x0) * k, (b[1] - box.y0) * k, (b[2] - box.x0) * k, (b[3] - box.y0) * k])


def overlap_fraction(bbox: Sequence[float], region: Sequence[float]) -> float:
    """Fraction of ``bbox``'s area inside ``region`` (both x1, y1, x2, y2)."""
    b = np.asarray(bbox, np.float64)
    r = np.asarray(region, np.float64)
    w = max(0.0, min(b[2], r[2]) - max(b[0], r[0]))
    h = max(0.0, min(b[3], r[3]) - max(b[1], r[1]))
    area = max((b[2] - b[0]) * (b[3] - b[1]), 1e-9)
    return w * h / area


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / max(union, 1e-9)


def clean_pad_ratio(
    target: Sequence[float], others: Sequence[Sequence[float]], pad_ratio: float, min_pad_ratio: float
) -> float | None:
    """The largest padding in [min_pad_ratio, pad_ratio] whose square no other face box enters.

    A square of side s centred at (cx, cy) misses a box when the box lies wholly beyond one of
    its edges, i.e. s <= 2·max(ox1 − cx, cx − ox2, oy1 − cy, cy − oy2). None when even
    ``min_pad_ratio`` lets one in.
    """
    x1, y1, x2, y2 = map(float, target)
    cx, cy, size = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1)
    best = pad_ratio
    for o in others:
        ox1, oy1, ox2, oy2 = map(float, o)
        s_max = 2.0 * max(ox1 - cx, cx - ox2, oy1 - cy, cy - oy2) * 0.99  # 1% clearance
        best = min(best, (s_max / size - 1.0) / 2.0)
    return best if best >= min_pad_ratio else None


def decode_long_side(img_w: int, img_h: int, box: SquareBox, out_size: int) -> int | None:
    """The smallest long side of a decoded copy that still gives the crop ``out_size`` pixels.

    None = decode at full size (the crop is upscaled anyway).
    """
    need = math.ceil(max(img_w, img_h) * out_size / box.side)
    return None if need >= max(img_w, img_h) else need


def render_crop(rgb: np.ndarray, scale: float, box: SquareBox, out_size: int) -> np.ndarray:
    """Cut ``box`` (original pixels) out of a decoded copy (``scale`` original px per decoded px).

    Parts outside the photo are black; the square is resized to ``out_size`` (area
    interpolation down, cubic up).
    """
    h, w = rgb.shape[:2]
    ix0 = round(box.x0 / scale)
    iy0 = round(box.y0 / scale)
    side = max(1, round(box.side / scale))
    canvas = np.zeros((side, side, 3), np.uint8)
    sx0, sy0 = max(ix0, 0), max(iy0, 0)
    sx1, sy1 = min(ix0 + side, w), min(iy0 + side, h)
    if sx1 > sx0 and sy1 > sy0:
        canvas[sy0 - iy0 : sy1 - iy0, sx0 - ix0 : sx1 - ix0] = rgb[sy0:sy1, sx0:sx1]
    if side == out_size:
        return canvas
    interp = cv2.INTER_AREA if side > out_size else cv2.INTER_CUBIC
    return cv2.resize(canvas, (out_size, out_size), interpolation=interp)


def mask_faces(
    img: np.ndarray, boxes: Sequence[Sequence[float]], keep: Sequence[float] | None, margin: float
) -> np.ndarray:
    """Fill each box (grown by ``margin`` per side) with its mean colour; pixels of ``keep`` stay."""
    out = img.copy()
    h, w = img.shape[:2]
    keep_mask = np.zeros((h, w), bool)
    if keep is not None:
        k = np.clip(np.round(np.asarray(keep, np.float64)), 0, [w, h, w, h]).astype(int)
        keep_mask[k[1] : k[3], k[0] : k[2]] = True
    for b in boxes:
        x1, y1, x2, y2 = map(float, b)
        mx, my = (x2 - x1) * margin, (y2 - y1) * margin
        g = np.clip(np.round([x1 - mx, y1 - my, x2 + mx, y2 + my]), 0, [w, h, w, h]).astype(int)
        if g[2] <= g[0] or g[3] <= g[1]:
            continue
        region = np.zeros((h, w), bool)
        region[g[1] : g[3], g[0] : g[2]] = True
        region &= ~keep_mask
        if region.any():
            out[region] = img[region].reshape(-1, 3).mean(0).round().astype(np.uint8)
    return out


def encode_png(rgb: np.ndarray) -> bytes:
    """8-bit, 3-channel PNG (OpenCV's encoder: deterministic bytes for the same pixels)."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    """Decode as roop does (cv2, 8-bit 3-channel BGR), returned as RGB."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("cannot decode PNG")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def pad_schedule(pad_ratio: float, clean: float | None, opts: CropOptions) -> list[tuple[float, bool]]:
    """(padding, mask known bystanders) pairs to try, in order."""
    lo = min(opts.min_pad_ratio, pad_ratio)
    if clean is not None and clean >= pad_ratio:
        plans = [(pad_ratio, False)]
    elif clean is not None and clean >= (pad_ratio + lo) / 2:
        plans = [(clean, False), (pad_ratio, True)]  # a little tighter beats a masked patch
    else:
        plans = [(pad_ratio, True)] + ([(clean, False)] if clean is not None else [])
    for i in range(1, opts.pad_steps + 1):
        p = pad_ratio - (pad_ratio - lo) * i / opts.pad_steps
        plans.append((round(p, 4), True))
    seen: set[tuple[float, bool]] = set()
    return [p for p in plans if not (p in seen or seen.add(p))]


def single_face_crop(
    rgb: np.ndarray,
    scale: float,
    target: Sequence[float],
    others: Sequence[Sequence[float]],
    detect: Detector,
    opts: CropOptions,
) -> CropResult:
    """A crop of ``target`` (box in original pixels) verified to hold exactly one detectable face.

    ``rgb`` is a decoded copy of the photo (``scale`` original px per decoded px); ``others``
    are the photo's other face boxes; ``detect`` re-detects in the encoded-then-decoded PNG.
    """
    clean = clean_pad_ratio(target, others, opts.pad_ratio, min(opts.min_pad_ratio, opts.pad_ratio))
    saw_target_with_extras = hid_larger = False
    last_pad = opts.pad_ratio
    for pad, use_masks in pad_schedule(opts.pad_ratio, clean, opts):
        last_pad = pad
        box = square_box(target, pad)
        tgt = to_crop_coords(target, box, opts.out_size)
        region = np.array([0, 0, opts.out_size, opts.out_size], np.float64)
        masks = [to_crop_coords(o, box, opts.out_size) for o in others] if use_masks else []
        masks = [m for m in masks if overlap_fraction(m, region) > 0]
        if any(_area(m) > _area(tgt) for m in masks):
            hid_larger = True  # never mask a face larger than the subject: the subject may be the mistake
            continue
        img = render_crop(rgb, scale, box, opts.out_size)
        for _ in range(opts.max_rounds):
            work = mask_faces(img, masks, tgt, opts.mask_margin) if masks else img
            png = encode_png(work)
            dets = detect(decode_png(png))
            hits = [d for d in dets if iou(d.bbox, tgt) >= MATCH_IOU]
            if len(dets) == 1 and hits:
                mode = "masked" if masks else ("clean" if pad >= opts.pad_ratio else "shrunk")
                return CropResult(png, pad, mode, len(masks), face=hits[0])
            if not hits:
                break  # the target itself is not found at this padding
            saw_target_with_extras = True
            extras = [d.bbox for d in dets if iou(d.bbox, tgt) < MATCH_IOU]
            if not extras:
                break  # the target detected twice: masking cannot help, try another padding
            if any(_area(b) > _area(tgt) for b in extras):
                hid_larger = True
                break
            masks = masks + extras
    reason = "larger_face" if hid_larger else ("bystander" if saw_target_with_extras else "no_face")
    return CropResult(None, last_pad, "refused", 0, reason)


def _area(b: Sequence[float]) -> float:
    return max(0.0, float(b[2]) - float(b[0])) * max(0.0, float(b[3]) - float(b[1]))


# --------------------------------------------------------------------------- crops of face-table rows, cached


@dataclass(frozen=True)
class CropJob:
    face_key: str
    sha256: str
    paths: tuple[str, ...]  # canonical first, then aliases
    img_w: int
    img_h: int
    bbox: tuple[float, ...]
    others: tuple[tuple[float, ...], ...]  # the photo's other face boxes

    def cache_key(self, opts: CropOptions, detector_id: str) -> str:
        blob = json.dumps(
            [CROP_VERSION, self.sha256, self.bbox, sorted(self.others), asdict(opts), detector_id], sort_keys=True
        )
        return hashlib.sha256(blob.encode()).hexdigest()


def _box(row: Any) -> tuple[float, ...]:
    return tuple(round(float(v), 2) for v in (row.x1, row.y1, row.x2, row.y2))


def crop_jobs(faces: pd.DataFrame, keys: Sequence[str]) -> dict[str, CropJob]:
    """Jobs for these face keys; every other face of the same photo is a possible bystander."""
    wanted = faces[faces["face_key"].isin(list(keys))]
    photos = faces[faces["sha256"].isin(wanted["sha256"].unique())]
    boxes: dict[str, list[tuple[str, tuple[float, ...]]]] = {}
    for r in photos.itertuples(index=False):
        boxes.setdefault(r.sha256, []).append((r.face_key, _box(r)))
    jobs = {}
    for r in wanted.itertuples(index=False):
        aliases = tuple(r.aliases) if r.aliases is not None else ()
        jobs[r.face_key] = CropJob(
            r.face_key,
            r.sha256,
            (r.path, *aliases),
            int(r.img_width),
            int(r.img_height),
            _box(r),
            tuple(b for k, b in boxes[r.sha256] if k != r.face_key),
        )
    return jobs


@dataclass(frozen=True)
class CropMeta:
    """What became of one crop (the PNG itself stays on disk, in the crop cache)."""

    ok: bool
    mode: str  # clean | shrunk | masked | refused
    pad_ratio: float
    masked: int
    reason: str | None = None  # bystander | no_face | larger_face | unreadable when refused
    embedding: list[float] | None = None  # the crop's face re-embedded (unit), when the check has a recognizer

    @staticmethod
    def of(res: CropResult, embedding: np.ndarray | None = None) -> CropMeta:
        emb = [round(float(v), 6) for v in embedding] if embedding is not None else None
        return CropMeta(res.png is not None, res.mode, round(float(res.pad_ratio), 4), res.masked, res.reason, emb)

    def as_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "pad_ratio": self.pad_ratio, "masked": self.masked}


class CropCache:
    """Finished crops (``<key>.png``) and their outcome (``<key>.json``, refusals too) by content key.

    A folder of immutable files written atomically (the JSON last, so a PNG without its JSON is
    an unfinished entry and is made again).
    """

    def __init__(self, folder: Path) -> None:
        self.dir = Path(folder)

    def _path(self, key: str, ext: str) -> Path:
        return self.dir / key[:2] / f"{key}.{ext}"

    def get(self, key: str) -> CropMeta | None:
        try:
            meta = json.loads(self._path(key, "json").read_text(encoding="utf-8"))
            found = CropMeta(**meta)
        except (OSError, ValueError, TypeError):
            return None
        return found if (not found.ok or self._path(key, "png").exists()) else None

    def put(self, key: str, res: CropResult, embedding: np.ndarray | None = None) -> CropMeta:
        meta = CropMeta.of(res, embedding)
        if res.png is not None:
            write_bytes(self._path(key, "png"), res.png)
        write_json(self._path(key, "json"), asdict(meta))
        return meta

    def png_path(self, key: str) -> Path:
        return self._path(key, "png")


def _decode_for(job: CropJob, crop: CropOptions) -> imageio.Decoded:
    box = square_box(job.bbox, min(crop.min_pad_ratio, crop.pad_ratio))
    target = decode_long_side(job.img_w, job.img_h, box, crop.out_size)
    last: Exception | None = None
    for p in job.paths:  # an alias serves when the canonical file is gone
        try:
            return imageio.decode(p, target_long_side=target)
        except (OSError, imageio.ImageLoadError) as exc:
            last = exc
    raise imageio.ImageLoadError(f"{job.paths[0]}: {last}")


@dataclass(frozen=True)
class RedetectCheck:
    """Export's re-detection (a ``Detector``) that can also embed the face it found."""

    detect: Detector
    embed: Callable[[np.ndarray, Sequence[Detection]], np.ndarray]

    def __call__(self, rgb: np.ndarray) -> list[Detection]:
        return self.detect(rgb)


def crop_embedding(res: CropResult, detect: Detector) -> np.ndarray | None:
    """The unit embedding of the crop's face, when ``detect`` carries a recognizer."""
    embed = getattr(detect, "embed", None)
    if embed is None or res.png is None or res.face is None:
        return None
    v = np.asarray(embed(decode_png(res.png), [res.face])[0], np.float64)
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else None


def make_crop(job: CropJob, detect: Detector, crop: CropOptions) -> CropResult:
    """One verified single-face crop (or a refusal); ``unreadable`` when the photo cannot be read."""
    try:
        dec = _decode_for(job, crop)
    except imageio.ImageLoadError as exc:
        log.warning("export: cannot read %s: %s", job.paths[0], exc)
        return CropResult(None, crop.pad_ratio, "refused", 0, "unreadable")
    return single_face_crop(dec.rgb, dec.scale, job.bbox, job.others, detect, crop)


@dataclass
class Cropper:
    """Makes crops in a thread pool, through the cache; results land in ``cache``."""

    detect: Detector
    detector_id: str
    crop: CropOptions
    cache: CropCache
    workers: int = 1
    made: int = 0
    reused: int = 0

    def run(self, jobs: Sequence[CropJob]) -> dict[str, CropMeta]:
        out: dict[str, CropMeta] = {}
        todo = []
        for job in jobs:
            hit = self.cache.get(job.cache_key(self.crop, self.detector_id))
            if hit is not None and hit.ok and hit.embedding is None and hasattr(self.detect, "embed"):
                hit = None  # made before the check could embed: make it again
            if hit is not None:
                out[job.face_key] = hit
                self.reused += 1
            else:
                todo.append(job)

        def one(job: CropJob) -> tuple[str, CropMeta]:
            res = make_crop(job, self.detect, self.crop)
            if res.reason == "unreadable":  # the photo may come back: do not remember that
                return job.face_key, CropMeta.of(res)
            emb = crop_embedding(res, self.detect)
            return job.face_key, self.cache.put(job.cache_key(self.crop, self.detector_id), res, emb)

        with ThreadPoolExecutor(max(1, self.workers)) as pool:
            for i, (key, meta) in enumerate(pool.map(one, todo), 1):
                out[key] = meta
                if i % 200 == 0:
                    log.info("export: %d/%d crops made", i, len(todo))
        self.made += len(todo)
        return out

    def png(self, job: CropJob) -> Path:
        return self.cache.png_path(job.cache_key(self.crop, self.detector_id))
