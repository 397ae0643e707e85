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
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import cv2
import numpy as np
import pandas as pd

from facesets import diskfull, imageio, schema
from facesets.analyzers.base import Analyzer
from facesets.atomic import write_json
from facesets.listing import retry_path
from facesets.options import threads
from facesets.progress import Progress
from facesets.store import FaceStore

log = logging.getLogger(__name__)

ALIGN_MIN_FACE = 112  # px: faces smaller than this in the detection copy get a finer decode


@dataclass(frozen=True)
class EmbedOptions:
    """The ``embed`` section's settings a run needs; no defaults here: ``options.build(EmbedOptions, "embed")``."""

    det_size: int
    min_face: int
    max_pixels: int
    batch_images: int
    workers: int  # 0 = the machine's threads (facesets.options.threads)


@dataclass
class EmbedStats:
    images: int = 0  # unique images in the listing (aliases not counted)
    files: int = 0  # files including aliases
    analyzed: int = 0  # images analyzed in this run (the rest came from the store)
    faces: int = 0
    noface: int = 0
    errors: int = 0
    retry: int = 0  # files whose error is a condition (I/O, changed since listed): retried next run
    seconds: float = 0.0
    img_per_s: float = 0.0
    model_id: str = ""
    finished: str = ""  # when this embed job ended (a rerun that embeds nothing new keeps it)


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


@dataclass(frozen=True)
class Todo:
    """One image to analyze: its listing sha256 and the paths holding it (canonical first)."""

    sha256: str
    paths: tuple[str, ...]


def _transient(sha: str, reason: str, model_id: str) -> dict:
    return _row(sha, "error", f"{reason} (not stored; retried next run)", None, None, model_id)


def _analyze_bytes(photo: imageio.PhotoFile, sha: str, analyzer: Analyzer, opts: EmbedOptions) -> list[dict]:
    mid = analyzer.model_id
    dec = imageio.decode(photo.fh, target_long_side=opts.det_size, max_pixels=opts.max_pixels)
    dets = [d.scaled(dec.scale) for d in analyzer.detect(dec.rgb)]
    dets = [d for d in dets if min(d.bbox[2] - d.bbox[0], d.bbox[3] - d.bbox[1]) >= opts.min_face]
    w, h = dec.meta.width, dec.meta.height
    if not dets:
        return [_row(sha, "noface", None, w, h, mid)]
    dets.sort(key=lambda d: (float(d.bbox[0] + d.bbox[2]), float(d.bbox[1] + d.bbox[3])))
    src = dec
    smallest = min(min(d.bbox[2] - d.bbox[0], d.bbox[3] - d.bbox[1]) for d in dets)
    if dec.scale > 1 and smallest / dec.scale < ALIGN_MIN_FACE:
        need = min(1.0, ALIGN_MIN_FACE / smallest)
        src = imageio.decode(photo.fh, target_long_side=math.ceil(max(w, h) * need), max_pixels=opts.max_pixels)
    emb = analyzer.embed(src.rgb, [d.scaled(1.0 / src.scale) for d in dets])
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
    return rows


def _analyze_path(path: str, sha: str | None, analyzer: Analyzer, opts: EmbedOptions) -> tuple[list[dict], bool]:
    mid = analyzer.model_id
    try:
        with imageio.open_photo(path) as photo:
            sha = sha or photo.sha256
            if photo.sha256 != sha:
                reason = f"file changed since it was listed (its bytes now hash to {photo.sha256[:16]}); re-listed"
                return [_transient(sha, reason, mid)], False
            try:
                rows = _analyze_bytes(photo, sha, analyzer, opts)
            except imageio.ImageLoadError as exc:
                if exc.transient:
                    raise
                rows = [_row(sha, "error", exc.reason, None, None, mid)]
            if not imageio.unchanged(photo):
                return [_transient(sha, "file changed while it was read", mid)], False
            return rows, True
    except imageio.ImageLoadError as exc:  # transient: an I/O condition of this path
        return [_transient(sha or "", exc.reason, mid)], False


def analyze_image(
    path: str | Sequence[str], sha: str | None, analyzer: Analyzer, opts: EmbedOptions
) -> tuple[list[dict], bool]:
    """Analyze one image from the first of its paths that holds its bytes.

    Returns (rows, persist?). Rows are stored (persist True) only when they are facts about
    the bytes hashing to ``sha``: faces, noface, undecodable, too large. An I/O condition
    or bytes that no longer match ``sha`` give one unstored error row. ``sha=None`` keys the
    rows by whatever the bytes hash to (benchmarks, ad-hoc use). Never raises.
    """
    paths = [path] if isinstance(path, str) else list(path)
    rows: list[dict] = [_transient(sha or "", "no path", analyzer.model_id)]
    try:
        for p in paths:
            rows, persist = _analyze_path(p, sha, analyzer, opts)
            if persist:
                return rows, True
            log.warning("embed: %s: %s", p, rows[0]["error"])
    except Exception as exc:
        log.exception("unexpected failure on %s", paths)
        return [
            _row(sha, "error", f"internal error: {type(exc).__name__}: {exc}", None, None, analyzer.model_id)
        ], False
    return rows, False


def _null(v: object) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA


def _chunks(items: Sequence, n: int) -> Iterator[Sequence]:
    for i in range(0, len(items), max(1, n)):
        yield items[i : i + max(1, n)]


def run_analysis(
    todo: Sequence[Todo | tuple[str, str]],
    analyzer: Analyzer,
    store: FaceStore,
    opts: EmbedOptions,
    progress: Progress | None = None,
    poll_s: float = 1.0,
    known: tuple[set[str], set[str]] | None = None,
) -> tuple[list[dict], int]:
    """Analyze images, writing results to the store one batch at a time.

    Returns (unpersisted rows, number of photos this call analysed).

    A batch is at most ``batch_images`` photos and the next batch starts only after this one's
    segment is written, so a kill at any moment loses at most ``batch_images`` analysed photos.
    Photos are claimed (store.Claims) before analysis; photos another live writer holds are
    deferred, then taken from the store when it has written them (or taken over if it died).
    """
    cv2.setNumThreads(1)
    items = [t if isinstance(t, Todo) else Todo(t[1], (t[0],)) for t in todo]
    claims = store.claims()
    # (segments already read, the keys they hold): the caller's scan of the store, not redone
    seen, done = (set(known[0]), set(known[1])) if known else (set(), set())
    done |= store.new_keys(seen)
    transient: list[dict] = []
    analyzed = 0
    pending = [t for t in items if t.sha256 not in done]
    if progress and len(pending) < len(items):
        progress.update(len(items) - len(pending))

    def analyze(t: Todo) -> tuple[list[dict], bool]:
        return analyze_image(t.paths, t.sha256, analyzer, opts)

    with ThreadPoolExecutor(max_workers=threads(opts.workers)) as pool:
        while pending:
            deferred: list[Todo] = []
            for chunk in _chunks(pending, opts.batch_images):
                done |= store.new_keys(seen)
                mine = []
                for t in chunk:
                    if t.sha256 in done:
                        if progress:
                            progress.update()
                    elif claims.take(t.sha256):
                        mine.append(t)
                    else:
                        deferred.append(t)
                fresh = store.new_keys(seen)  # a writer may have stored one just before we claimed it
                if fresh:
                    done |= fresh
                    claims.release(t.sha256 for t in mine if t.sha256 in fresh)
                    if progress:
                        progress.update(sum(t.sha256 in fresh for t in mine))
                    mine = [t for t in mine if t.sha256 not in fresh]
                batch: list[dict] = []
                try:
                    for rows, persist in pool.map(analyze, mine):
                        (batch if persist else transient).extend(rows)
                        analyzed += 1
                        claims.touch()
                        if progress:
                            progress.update()
                    if batch:
                        with diskfull.guard(store.dir, "the face store"):
                            seg = store.add(pd.DataFrame(batch))
                        if seg is not None:
                            seen.add(seg.name)
                        done |= {r["sha256"] for r in batch}
                finally:
                    claims.release([t.sha256 for t in mine])
            if not deferred:
                break
            done |= store.new_keys(seen)
            waiting = [t for t in deferred if t.sha256 not in done]
            if progress and len(waiting) < len(deferred):
                progress.update(len(deferred) - len(waiting))
            if waiting and all(not claims.stale(t.sha256) for t in waiting):
                log.info("embed: waiting for %d photos another embed is analysing", len(waiting))
                time.sleep(poll_s)
            pending = waiting
    claims.sweep(done | store.new_keys(seen))
    return transient, analyzed


def build_tables(listing: pd.DataFrame, results: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Join listing rows with analyzer results into (faces, images) tables, sorted by path.

    Vectorised: one index lookup per listing row and one merge for the face rows (no
    per-image pandas work), so a 10k-photo library costs tens of milliseconds.
    """
    lst = listing.reset_index(drop=True)
    aliases = lst["aliases"].map(lambda a: list(a) if a is not None else [])
    res = results.reset_index(drop=True) if len(results) else results
    first = res.drop_duplicates("sha256", keep="first") if len(res) else res
    pos = pd.Index(first["sha256"]).get_indexer(lst["sha256"]) if len(first) else np.full(len(lst), -1)
    listing_err = lst["error"].notna().to_numpy()
    found = (pos >= 0) & ~listing_err

    def pick(col: str) -> np.ndarray:
        vals = np.full(len(lst), None, dtype=object)
        if found.any():
            vals[found] = first[col].to_numpy(dtype=object)[pos[found]]
        return vals

    status, err, model_id = pick("status"), pick("error"), pick("model_id")
    width = np.where(found, pick("img_width"), lst["width"].to_numpy(dtype=object))
    height = np.where(found, pick("img_height"), lst["height"].to_numpy(dtype=object))
    status[~found] = "error"
    err[~found] = np.where(listing_err[~found], lst["error"].to_numpy(dtype=object)[~found], "not analyzed")
    err[found & (status == "faces")] = None
    err = np.array([None if _null(e) else e for e in err], dtype=object)
    face_rows = res[res["status"] == "faces"] if len(res) else res
    counts = face_rows.groupby("sha256").size() if len(face_rows) else pd.Series(dtype=int)
    n_faces = np.where(found & (status == "faces"), counts.reindex(lst["sha256"]).fillna(0).to_numpy(), 0)
    images_df = pd.DataFrame(
        {
            "source": lst["source"],
            "sha256": lst["sha256"],
            "path": lst["path"],
            "relpath": lst["relpath"],
            "aliases": aliases,
            "status": status,
            "error": err,
            "n_faces": n_faces.astype(int),
            "img_width": width,
            "img_height": height,
            "orientation": lst["orientation"],
            "capture_time": lst["capture_time"],
            "model_id": model_id,
        },
        columns=schema.IMAGES.names,
    )
    faces_df = pd.DataFrame(columns=schema.FACES.names)
    keep = lst.loc[found & (status == "faces"), ["source", "sha256", "path", "relpath"]]
    if len(keep) and len(face_rows):
        keep = keep.assign(aliases=aliases[keep.index])
        cols = ["sha256", "face_index", "img_width", "img_height", "x1", "y1", "x2", "y2", "kps", "det_score"]
        f = face_rows[[*cols, "embedding", "model_id"]].merge(keep, on="sha256", how="inner")
        f["face_key"] = f["sha256"] + "_" + f["face_index"].astype(int).astype(str)
        faces_df = f[list(schema.FACES.names)]
        faces_df = faces_df.sort_values(["path", "face_index"], kind="stable").reset_index(drop=True)
    images_df = images_df.sort_values("path", kind="stable").reset_index(drop=True)
    return faces_df, images_df


def sidecar_paths(faces_out: Path) -> tuple[Path, Path]:
    """Where the image records and run stats go beside a face table."""
    stem = faces_out.name.removesuffix(".parquet")
    return faces_out.with_name(stem + ".images.parquet"), faces_out.with_name(stem + ".stats.json")


def _located(where: Callable[[str], str], aliases: Sequence[str] | None) -> list[str]:
    """Aliases as this host opens them; one outside every --path-map is left out (never fatal)."""
    out = []
    for a in list(aliases) if aliases is not None else []:
        try:
            out.append(where(a))
        except ValueError:
            continue
    return out


def _progress_name(listing: pd.DataFrame, faces_out: Path) -> str:
    name = "embed"
    if len(listing):
        name += f" {listing['source'].iloc[0]}"
    if faces_out.parent.parent.name == "shards":  # rules/embed.smk: shards/<n>/<i>.faces.parquet
        name += f" shard {faces_out.name.split('.')[0]}/{faces_out.parent.name}"
    return name


def embed_listing(
    listing: pd.DataFrame,
    analyzer: Analyzer,
    store: FaceStore,
    opts: EmbedOptions,
    faces_out: Path,
    plain_progress: bool = False,
    locate: Callable[[str], str] | None = None,
    progress_echo: TextIO | None = None,
) -> EmbedStats:
    """The whole embed step for one listing; writes faces, image records, stats and retry list.

    ``locate`` maps a listing path to where this host opens the file (a Windows embed opens
    a WSL listing's photos through the WSL share); tables keep the listing's paths. A photo
    is opened at its canonical path, then at its aliases (byte-identical copies) if that fails.
    ``progress_echo`` also gets the plain progress lines (the console under Snakemake).
    """
    t0 = time.monotonic()
    faces_out = Path(faces_out)
    readable = listing[listing["error"].isna() & listing["sha256"].notna()]
    seen: set[str] = set()
    done = store.new_keys(seen)
    where = locate or (lambda p: p)
    todo = [
        Todo(r.sha256, (where(r.path), *_located(where, r.aliases)))
        for r in readable.itertuples(index=False)
        if r.sha256 not in done
    ]
    log.info(
        "embed: %d unique images, %d in the store already, %d to analyze (model %s)",
        len(readable),
        len(readable) - len(todo),
        len(todo),
        analyzer.model_id,
    )
    progress = Progress(len(todo), _progress_name(listing, faces_out), force_plain=plain_progress, echo=progress_echo)
    if todo:
        progress.update(0)  # a first line at once: the console knows the job started and how much it has
    try:
        transient, analyzed = run_analysis(todo, analyzer, store, opts, progress, known=(seen, done))
    finally:
        progress.close()
    elapsed = time.monotonic() - t0
    results = store.load(readable["sha256"])
    if transient:
        results = pd.concat([results, pd.DataFrame(transient)], ignore_index=True)
    faces, images = build_tables(listing, results)
    images_out, stats_out = sidecar_paths(faces_out)
    retry = _retry_records(listing, images, {r["sha256"] for r in transient})
    with diskfull.guard(faces_out.parent, "the face table"):
        schema.write_table(images, schema.IMAGES, images_out)
        schema.write_table(faces, schema.FACES, faces_out)
        write_json(retry_path(faces_out), retry)
    stats = EmbedStats(
        images=len(listing),
        files=len(listing) + int(listing["aliases"].map(len).sum()),
        analyzed=analyzed,
        faces=len(faces),
        noface=int((images["status"] == "noface").sum()),
        errors=int((images["status"] == "error").sum()),
        retry=len(retry),
        seconds=round(elapsed, 3),
        img_per_s=round(analyzed / elapsed, 2) if elapsed > 0 and analyzed else 0.0,
        model_id=analyzer.model_id,
        finished=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )
    with diskfull.guard(faces_out.parent, "the face table"):
        write_json(stats_out, asdict(stats))
    log.info("embed: %s", stats)
    return stats


def _retry_records(listing: pd.DataFrame, images: pd.DataFrame, transient_shas: set[str]) -> list[dict]:
    """Files whose record is a condition that may clear: listing errors and unstored embed errors."""
    rows = images[(images["status"] == "error") & (images["sha256"].isna() | images["sha256"].isin(transient_shas))]
    out = []
    for r in rows.itertuples(index=False):
        for p in [r.path, *(list(r.aliases) if r.aliases is not None else [])]:
            out.append({"path": p, "reason": r.error})
    return sorted(out, key=lambda d: d["path"])
