"""The ``embed`` step: listing + face store -> face table and image records.

Per image: reduced-size decode (EXIF-oriented) -> detect -> faces mapped to original
pixels -> alignment crops from enough resolution (a finer decode only when a face is
too small in the detection copy) -> embeddings. Results go to the face store in atomic
batches, so an interrupted run resumes where it stopped and an image whose sha256 the
store already knows (under any path or source) is never analyzed again.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from facesets import imageio, schema
from facesets.analyzers.base import Analyzer
from facesets.atomic import write_json
from facesets.progress import Progress
from facesets.store import FaceStore

log = logging.getLogger(__name__)

ALIGN_MIN_FACE = 112  # px: faces smaller than this in the detection copy get a finer decode


@dataclass(frozen=True)
class EmbedOptions:
    det_size: int = 640
    min_face: int = 16
    max_pixels: int = 250_000_000
    batch_images: int = 32
    workers: int = 2


@dataclass
class EmbedStats:
    images: int = 0  # unique images in the listing (aliases not counted)
    files: int = 0  # files including aliases
    analyzed: int = 0  # images analyzed in this run (the rest came from the store)
    faces: int = 0
    noface: int = 0
    errors: int = 0
    seconds: float = 0.0
    img_per_s: float = 0.0
    model_id: str = ""


def _row(sha: str, status: str, error: str | None, w: int | None, h: int | None, model_id: str) -> dict:
    return {
        "sha256": sha,
        "status": status,
        "error": error,
        "img_width": w,
        "img_height": h,
        "face_index": -1,
        "model_id": model_id,
    }


def analyze_image(path: str, sha: str, analyzer: Analyzer, opts: EmbedOptions) -> tuple[list[dict], bool]:
    """Analyze one image. Returns (store rows, persist?). Never raises."""
    mid = analyzer.model_id
    try:
        dec = imageio.decode(path, target_long_side=opts.det_size, max_pixels=opts.max_pixels)
        dets = [d.scaled(dec.scale) for d in analyzer.detect(dec.rgb)]
        dets = [d for d in dets if min(d.bbox[2] - d.bbox[0], d.bbox[3] - d.bbox[1]) >= opts.min_face]
        w, h = dec.meta.width, dec.meta.height
        if not dets:
            return [_row(sha, "noface", None, w, h, mid)], True
        dets.sort(key=lambda d: (float(d.bbox[0] + d.bbox[2]), float(d.bbox[1] + d.bbox[3])))
        src = dec
        smallest = min(min(d.bbox[2] - d.bbox[0], d.bbox[3] - d.bbox[1]) for d in dets)
        if dec.scale > 1 and smallest / dec.scale < ALIGN_MIN_FACE:
            need = min(1.0, ALIGN_MIN_FACE / smallest)
            src = imageio.decode(path, target_long_side=math.ceil(max(w, h) * need), max_pixels=opts.max_pixels)
        emb = analyzer.embed(src.rgb, [d.scaled(1.0 / src.scale) for d in dets])
    except imageio.ImageLoadError as exc:
        return [_row(sha, "error", str(exc), None, None, mid)], True
    except Exception as exc:
        log.exception("unexpected failure on %s", path)
        return [_row(sha, "error", f"internal error: {type(exc).__name__}: {exc}", None, None, mid)], False
    rows = []
    for i, (d, e) in enumerate(zip(dets, emb, strict=True)):
        rows.append(
            {
                "sha256": sha,
                "status": "faces",
                "error": None,
                "img_width": w,
                "img_height": h,
                "face_index": i,
                "x1": float(d.bbox[0]),
                "y1": float(d.bbox[1]),
                "x2": float(d.bbox[2]),
                "y2": float(d.bbox[3]),
                "kps": d.kps.reshape(-1).astype(np.float32),
                "det_score": d.score,
                "embedding": e.astype(np.float32),
                "model_id": mid,
            }
        )
    return rows, True


def _windowed(pool: ThreadPoolExecutor, fn: Callable, items: Sequence, ahead: int) -> Iterator:
    """pool.map with a bounded number of tasks in flight, results in order."""
    pending: deque[Future] = deque()
    it = iter(items)
    for item in it:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def run_analysis(
    todo: Sequence[tuple[str, str]],
    analyzer: Analyzer,
    store: FaceStore,
    opts: EmbedOptions,
    progress: Progress | None = None,
) -> list[dict]:
    """Analyze (path, sha) pairs, writing results to the store in batches. Returns unpersisted rows."""
    cv2.setNumThreads(1)
    transient: list[dict] = []
    batch: list[dict] = []
    n_in_batch = 0
    with ThreadPoolExecutor(max_workers=max(1, opts.workers)) as pool:
        for rows, persist in _windowed(
            pool, lambda ps: analyze_image(ps[0], ps[1], analyzer, opts), todo, ahead=max(2, opts.workers * 4)
        ):
            (batch if persist else transient).extend(rows)
            n_in_batch += 1
            if progress:
                progress.update()
            if n_in_batch >= opts.batch_images:
                if batch:
                    store.add(pd.DataFrame(batch))
                batch, n_in_batch = [], 0
        if batch:
            store.add(pd.DataFrame(batch))
    return transient


def _null(v: object) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA


def build_tables(listing: pd.DataFrame, results: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Join listing rows with analyzer results into (faces, images) tables, sorted by path."""
    by_sha = {sha: g for sha, g in results.groupby("sha256", sort=False)} if len(results) else {}
    faces, images = [], []
    for r in listing.itertuples(index=False):
        aliases = list(r.aliases) if r.aliases is not None else []
        base = {"source": r.source, "sha256": r.sha256, "path": r.path, "relpath": r.relpath, "aliases": aliases}
        img = {
            **base,
            "orientation": r.orientation,
            "capture_time": r.capture_time,
            "img_width": r.width,
            "img_height": r.height,
        }
        g = by_sha.get(r.sha256) if not _null(r.sha256) else None
        if not _null(r.error) or g is None:
            reason = r.error if not _null(r.error) else "not analyzed"
            images.append({**img, "status": "error", "error": reason, "n_faces": 0, "model_id": None})
            continue
        first = g.iloc[0]
        img.update(img_width=first["img_width"], img_height=first["img_height"], model_id=first["model_id"])
        if first["status"] != "faces":
            err = None if _null(first["error"]) else first["error"]
            images.append({**img, "status": first["status"], "error": err, "n_faces": 0})
            continue
        g = g.sort_values("face_index")
        images.append({**img, "status": "faces", "error": None, "n_faces": len(g)})
        for f in g.itertuples(index=False):
            faces.append(
                {
                    **base,
                    "face_key": schema.face_key(r.sha256, int(f.face_index)),
                    "face_index": f.face_index,
                    "img_width": f.img_width,
                    "img_height": f.img_height,
                    "x1": f.x1,
                    "y1": f.y1,
                    "x2": f.x2,
                    "y2": f.y2,
                    "kps": f.kps,
                    "det_score": f.det_score,
                    "embedding": f.embedding,
                    "model_id": f.model_id,
                }
            )
    faces_df = pd.DataFrame(faces, columns=schema.FACES.names)
    images_df = pd.DataFrame(images, columns=schema.IMAGES.names)
    if len(faces_df):
        faces_df = faces_df.sort_values(["path", "face_index"], kind="stable").reset_index(drop=True)
    images_df = images_df.sort_values("path", kind="stable").reset_index(drop=True)
    return faces_df, images_df


def sidecar_paths(faces_out: Path) -> tuple[Path, Path]:
    """Where the image records and run stats go beside a face table."""
    stem = faces_out.name.removesuffix(".parquet")
    return faces_out.with_name(stem + ".images.parquet"), faces_out.with_name(stem + ".stats.json")


def embed_listing(
    listing: pd.DataFrame,
    analyzer: Analyzer,
    store: FaceStore,
    opts: EmbedOptions,
    faces_out: Path,
    plain_progress: bool = False,
    locate: Callable[[str], str] | None = None,
) -> EmbedStats:
    """The whole embed step for one listing; writes faces, image records and stats.

    ``locate`` maps a listing path to where this host opens the file (a Windows embed opens
    a WSL listing's photos through the WSL share); tables keep the listing's paths.
    """
    t0 = time.monotonic()
    readable = listing[listing["error"].isna() & listing["sha256"].notna()]
    done = store.done()
    where = locate or (lambda p: p)
    todo = [(where(r.path), r.sha256) for r in readable.itertuples(index=False) if r.sha256 not in done]
    log.info(
        "embed: %d unique images, %d in the store already, %d to analyze (model %s)",
        len(readable),
        len(readable) - len(todo),
        len(todo),
        analyzer.model_id,
    )
    progress = Progress(len(todo), "embed", force_plain=plain_progress)
    try:
        transient = run_analysis(todo, analyzer, store, opts, progress)
    finally:
        progress.close()
    elapsed = time.monotonic() - t0
    results = store.load(readable["sha256"])
    if transient:
        results = pd.concat([results, pd.DataFrame(transient)], ignore_index=True)
    faces, images = build_tables(listing, results)
    images_out, stats_out = sidecar_paths(faces_out)
    schema.write_table(images, schema.IMAGES, images_out)
    schema.write_table(faces, schema.FACES, faces_out)
    stats = EmbedStats(
        images=len(listing),
        files=len(listing) + int(listing["aliases"].map(len).sum()),
        analyzed=len(todo),
        faces=len(faces),
        noface=int((images["status"] == "noface").sum()),
        errors=int((images["status"] == "error").sum()),
        seconds=round(elapsed, 3),
        img_per_s=round(len(todo) / elapsed, 2) if elapsed > 0 and todo else 0.0,
        model_id=analyzer.model_id,
    )
    write_json(stats_out, asdict(stats))
    log.info("embed: %s", stats)
    return stats
