"""The Immich stage pipeline: enumerate, select, dedup, prefilter by face size, download.

``stage_immich`` runs against one server with one client per API key. Order of work:

1. Ask the server's version (``GET /api/server/version``) and enumerate every IMAGE asset of
   every key with ``POST /api/search/metadata``, once per configured visibility (always
   explicit): before v3.2 with the flat fields, paging until ``nextPage`` is null; from v3.2
   on (flat fields deprecated, removed in v4) with a ``filter`` tree, following ``nextCursor``.
   The listing is taken twice (offset paging skips an asset when an earlier one goes away
   meanwhile); an asset only the second pass saw is kept, and if a third pass still finds new
   ones the report names the gap instead of finishing quietly.
2. Select from the enumeration alone (recomputed every run): IMAGE, not trashed, not
   offline, ``originalPath`` passes the include/exclude globs. Assets with the same checksum
   (same bytes) form a group; one asset per group is processed (the one already staged,
   else the smallest (originalPath, id)), the others are internal duplicates.
3. Give every new winner its local path: ``safe_relpath(originalPath)``, disambiguated
   deterministically against paths already claimed; save the state.
4. Process the winners with N workers: ``GET /api/faces?id=``, scale the boxes to the
   oriented original, skip when no face is at least ``min_face_short`` px; download the
   original into a temp file beside its target, verify the base64 SHA-1 (external-library
   assets carry a SHA-1 of their path instead: their bytes are checked against the
   Content-Length, or by a second download when there is none), then drop it when its sha256
   is already in the face store or was staged earlier, else rename it into place.
   "No face" and "no big face" are re-asked when the asset's ``updatedAt`` or
   ``min_face_short`` changed, or for all of them with ``recheck_no_face``.

Every decision is recorded in ``state.json``; finished ones are never fetched again. An
outage (circuit breaker), an auth error or Ctrl-C saves the state and raises.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from facesets import imageio
from facesets.globs import selected
from facesets.immich.client import (
    ImmichAuthError,
    ImmichClient,
    ImmichError,
    ImmichOutage,
    ImmichTLSError,
)
from facesets.immich.geometry import largest_face_short
from facesets.immich.models import Asset, ResponseShapeError, parse_cursor_page, parse_faces, parse_search_page
from facesets.immich.paths import PathClaims, path_under, safe_relpath, split_server_path
from facesets.immich.state import FINAL_SKIPS, State
from facesets.options import section, source_block

log = logging.getLogger(__name__)
FATAL = (ImmichOutage, ImmichAuthError, ImmichTLSError, ResponseShapeError)


# How the stage works, not what it stages: no config key sets these (tests may override them).
CHECKSUM_RETRIES = 2  # downloads again when the bytes do not match the checksum
LISTING_PASSES = 3  # at most: 2 always, a 3rd when the 2nd found assets the 1st missed
STATE_INTERVAL_S = 1.0  # state.json written at most this often (and at the end)
PROGRESS_INTERVAL_S = 10.0


@dataclass(frozen=True)
class StageOptions:
    """What a stage run needs; no defaults here: ``stage_options`` fills them from the schemas."""

    label: str
    workers: int
    min_face_short: float
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    visibility: tuple[str, ...]
    page_size: int
    checksum_retries: int
    recheck_no_face: bool  # ask Immich again about every no_face / no_big_face asset
    listing_passes: int
    state_interval_s: float
    progress_interval_s: float


def stage_options(
    label: str,
    immich: Mapping[str, Any] | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    **override: Any,
) -> StageOptions:
    """Options from a source's ``immich`` block (config/schemas/source.schema.yaml, its defaults
    filled in; the server and key names are not needed here) and the source's include/exclude
    globs (None or no include: the ``stage`` section's defaults); ``override`` sets any field."""
    block = source_block("immich", immich, f"immich settings of {label}")
    stage = section("stage")
    values: dict[str, Any] = {
        "label": label,
        "workers": block["workers"],
        "min_face_short": float(block["min_face_short"]),
        "include": tuple(include or stage["include"]),
        "exclude": tuple(stage["exclude"] if exclude is None else exclude),
        "visibility": tuple(block["visibility"]),
        "page_size": block["page_size"],
        "checksum_retries": CHECKSUM_RETRIES,
        "recheck_no_face": bool(block["recheck_no_face"]),
        "listing_passes": LISTING_PASSES,
        "state_interval_s": STATE_INTERVAL_S,
        "progress_interval_s": PROGRESS_INTERVAL_S,
    }
    return StageOptions(**{**values, **override})


@dataclass
class StageReport:
    label: str
    outcome: str = "running"  # complete | outage | auth | tls | interrupted | failed
    message: str = ""
    seen: int = 0
    images: int = 0
    excluded: int = 0
    trashed_or_offline: int = 0
    staged: int = 0
    staged_now: int = 0
    in_store: int = 0
    duplicates: int = 0
    no_face: int = 0
    no_big_face: int = 0
    errors: int = 0
    pending: int = 0
    processed_now: int = 0
    fetched_faces_now: int = 0
    downloads_now: int = 0
    adopted_now: int = 0
    checksum_mismatches: int = 0
    external_verified_now: int = 0  # path-checksum (external library) downloads checked by size / twice
    rechecked_now: int = 0  # no_face / no_big_face assets asked again this run
    server_version: str = ""
    search_api: str = ""  # flat (page) | filter (cursor, v3.2+)
    listing_passes: int = 0
    listing_late: int = 0  # assets the first listing pass missed and a later pass found
    listing_gap: int = 0  # assets the last pass still found new: the listing may be incomplete
    request_retries: int = 0
    rate_limited: int = 0
    requests: int = 0
    bytes_now: int = 0
    state_writes: int = 0
    elapsed_s: float = 0.0
    error_samples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def format_report(r: StageReport) -> str:
    rate = r.processed_now / r.elapsed_s if r.elapsed_s > 0 else 0.0
    lines = [
        f"immich {r.label}: {r.outcome}",
        f"  seen {r.seen} assets ({r.images} images; {r.excluded} excluded by path, "
        f"{r.trashed_or_offline} trashed/offline)",
        f"  staged {r.staged} ({r.staged_now} this run, {r.adopted_now} adopted from disk)",
        f"  byte-deduped vs store {r.in_store}, internal duplicates {r.duplicates}",
        f"  skipped: no face {r.no_face}, no big face {r.no_big_face}",
        f"  transient errors {r.errors} (retried on the next run), still pending {r.pending}",
        f"  this run: {r.processed_now} assets processed in {r.elapsed_s:.1f} s ({rate:.1f}/s), "
        f"{r.fetched_faces_now} face lookups, {r.downloads_now} downloads ({r.bytes_now / 1e6:.1f} MB), "
        f"{r.requests} requests, {r.request_retries} retries, {r.rate_limited} rate-limited, "
        f"{r.checksum_mismatches} checksum mismatches",
    ]
    if r.listing_passes:
        lines.append(
            f"  listing: Immich {r.server_version or '?'} ({r.search_api} search), {r.listing_passes} passes, "
            f"{r.listing_late} assets only a later pass saw"
            + (f"; GAP: the last pass still found {r.listing_gap} new assets, re-run" if r.listing_gap else "")
        )
    if r.rechecked_now or r.external_verified_now:
        lines.append(
            f"  re-checked no-face assets {r.rechecked_now}, external-library downloads verified by size "
            f"{r.external_verified_now}"
        )
    if r.message:
        lines.append(f"  {r.message}")
    return "\n".join(lines)


class ChecksumMismatch(ImmichError):
    pass


class _Stopped(Exception):
    """The run is stopping: leave the asset pending, record nothing."""


@dataclass(frozen=True)
class Outcome:
    asset_id: str
    fields: dict[str, Any]
    counters: dict[str, int]


def server_relpath(original_path: str) -> str:
    """The originalPath as a relative '/'-path for include/exclude globs."""
    return "/".join(split_server_path(original_path))


def selection_reason(asset: Asset, opts: StageOptions) -> str | None:
    if asset.type != "IMAGE":
        return "not_image"
    if asset.is_trashed:
        return "trashed"
    if asset.is_offline:
        return "offline"
    if not selected(server_relpath(asset.original_path), opts.include, opts.exclude):
        return "excluded"
    return None


FILTER_API_SINCE = (3, 2, 0)  # immich PR #30179: filter tree + cursor; flat fields deprecated


@dataclass(frozen=True)
class ListingInfo:
    server_version: str
    search_api: str  # "flat" | "filter"
    passes: int
    late: int  # found only by a pass after the first
    gap: int  # found new by the last pass (the listing kept changing)


def search_api_for(version: tuple[int, int, int] | None) -> str:
    """The search API a server has: ``filter`` from v3.2 on, ``flat`` before (and when unknown)."""
    return "filter" if version is not None and version >= FILTER_API_SINCE else "flat"


def _list_once(client: ImmichClient, vis: str, api: str, page_size: int) -> list[Asset]:
    """One full listing of one key and visibility."""
    out: list[Asset] = []
    if api == "filter":
        cursor: str | None = None
        seen_cursors: set[str] = set()
        while True:
            body: dict[str, Any] = {
                "filter": {"type": {"eq": "IMAGE"}, "visibility": {"eq": vis}},
                "size": page_size,
                "withExif": False,
            }
            if cursor is not None:
                body["cursor"] = cursor
            result = parse_cursor_page(client.search_metadata(body))
            out += result.assets
            if result.next_cursor is None:
                return out
            if result.next_cursor in seen_cursors or not result.assets:
                raise ResponseShapeError(
                    f"search/metadata: nextCursor repeats or follows an empty page ({len(out)} items so far)"
                )
            seen_cursors.add(result.next_cursor)
            cursor = result.next_cursor
    page: int | None = 1
    while page is not None:
        body = {"type": "IMAGE", "page": page, "size": page_size, "visibility": vis, "withExif": False}
        result = parse_search_page(client.search_metadata(body))
        out += result.assets
        if result.next_page is not None and (result.next_page <= page or not result.assets):
            raise ResponseShapeError(
                f"search/metadata: nextPage {result.next_page} after page {page} "
                f"with {len(result.assets)} items would never end"
            )
        page = result.next_page
    return out


def enumerate_assets(
    clients: Sequence[ImmichClient], opts: StageOptions
) -> tuple[dict[str, tuple[Asset, int]], ListingInfo]:
    """Every asset of every key and visibility: id -> (asset, index of the first key that saw it).

    Repeated passes (see the module doc) make the union complete unless the library keeps
    changing; the later passes' asset data win (it is the newer).
    """
    version = clients[0].server_version()
    api = search_api_for(version)
    vtext = ".".join(map(str, version)) if version else "unknown (no /server/version)"
    log.info("immich %s: server version %s, %s search API", opts.label, vtext, api)
    seen: dict[str, tuple[Asset, int]] = {}
    late = gap = 0
    passes = 0
    for n in range(max(1, opts.listing_passes)):
        passes = n + 1
        new_ids: set[str] = set()
        this_pass: dict[str, tuple[Asset, int]] = {}
        for k, client in enumerate(clients):
            for vis in opts.visibility:
                for a in _list_once(client, vis, api, opts.page_size):
                    this_pass.setdefault(a.id, (a, k))
        for aid, (a, k) in this_pass.items():
            if aid not in seen:
                new_ids.add(aid)
                seen[aid] = (a, k)
            else:
                seen[aid] = (a, seen[aid][1])
        log.info("immich %s: listing pass %d: %d assets, %d new", opts.label, passes, len(this_pass), len(new_ids))
        if n == 0:
            continue
        if not new_ids:
            gap = 0
            break
        late += len(new_ids)
        gap = len(new_ids)
    if gap:
        log.warning(
            "immich %s: the listing kept changing: pass %d still found %d assets the earlier passes missed; "
            "the listing may be incomplete, run the stage again",
            opts.label,
            passes,
            gap,
        )
    return seen, ListingInfo(vtext, api, passes, late, gap)


def _sha1_b64_and_sha256(path: Path) -> tuple[str, str]:
    sha1, sha256 = hashlib.sha1(), hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            sha1.update(chunk)
            sha256.update(chunk)
    return base64.b64encode(sha1.digest()).decode(), sha256.hexdigest()


def _final(
    rec: dict[str, Any] | None,
    asset: Asset,
    files: Path,
    in_store: Callable[[str], bool],
    opts: StageOptions,
    staged_shas: frozenset[str] = frozenset(),
) -> bool:
    """A decision that needs no new request: a staged file still there, a face-size skip whose
    grounds did not change, bytes the face store still holds, or bytes another asset of this
    label holds staged (found by the download's sha256: e.g. an external-library copy, whose
    path checksum differs from its twin's)."""
    if not rec:
        return False
    if rec.get("status") == "skipped" and rec.get("reason") == "duplicate" and rec.get("sha256"):
        return rec["sha256"] in staged_shas
    if rec.get("status") == "staged":
        try:
            return path_under(files, rec["path"]).stat().st_size == rec.get("size")
        except (OSError, KeyError, ValueError):
            return False
    if rec.get("status") == "skipped" and rec.get("reason") in FINAL_SKIPS:
        if rec["reason"] == "in_store":
            return in_store(rec.get("sha256", ""))
        return not face_skip_stale(rec, asset, opts)
    return False


def face_skip_stale(rec: dict[str, Any], asset: Asset, opts: StageOptions) -> bool:
    """A no_face / no_big_face decision to take again: on request, when Immich changed the asset
    since (``updatedAt``: e.g. face detection ran late), or when ``min_face_short`` changed.
    Records from before these fields were kept count as changed."""
    if opts.recheck_no_face:
        return True
    if rec.get("updated_at") != asset.updated_at:
        return True
    return rec.get("min_face_short") != opts.min_face_short


class _Worker:
    """What one asset needs: faces, prefilter, download, verify, dedup, rename."""

    def __init__(self, clients, opts, files: Path, in_store, stop: threading.Event):
        self.clients = clients
        self.opts = opts
        self.files = files
        self.in_store = in_store
        self.stop = stop
        self.lock = threading.Lock()
        self.staged_sha: dict[str, str] = {}

    def run(self, asset: Asset, key: int, relpath: str, restage: bool = False) -> Outcome:
        counters: dict[str, int] = {}
        try:
            fields = self._run(asset, key, relpath, counters, restage)
        except (*FATAL, _Stopped):
            raise
        except (ImmichError, OSError, imageio.ImageLoadError, ValueError) as exc:
            msg = str(exc)[:300]
            log.warning("immich asset %s (%s): %s", asset.id, relpath, msg)
            fields = {"status": "error", "last_error": msg}
            counters["error"] = 1
        return Outcome(asset.id, fields, counters)

    def _big_enough(self, faces, size, edited: bool = False) -> tuple[bool, float]:
        short = largest_face_short(faces, *size, edited=edited)
        return short >= self.opts.min_face_short, round(short, 1)

    def _face_skip(self, asset: Asset, reason: str, short: float) -> dict[str, Any]:
        return {
            "status": "skipped",
            "reason": reason,
            "face_short": short,
            "updated_at": asset.updated_at,
            "min_face_short": self.opts.min_face_short,
        }

    def _matches(self, asset: Asset, d, client, tmp: Path, counters: dict[str, int]) -> bool:
        """Do the downloaded bytes belong to the asset? Content checksum: SHA-1 equal. Path
        checksum (external library): the body had the announced Content-Length, else a second
        download gave the same bytes."""
        if not asset.path_checksum:
            return d.sha1_b64 == asset.checksum
        if d.length_checked:
            counters["external_verified"] = 1
            return True
        again = client.download_original(asset.id, tmp.with_suffix(".again"))
        tmp.with_suffix(".again").unlink(missing_ok=True)
        counters["downloads"] = counters.get("downloads", 0) + 1
        counters["bytes"] = counters.get("bytes", 0) + again.size
        if again.sha256 == d.sha256:
            counters["external_verified"] = 1
            return True
        return False

    def _run(self, asset: Asset, key: int, relpath: str, counters: dict[str, int], restage: bool) -> dict[str, Any]:
        client = self.clients[key]
        target = path_under(self.files, relpath)
        if target.is_file():  # staged before a crash that lost the state write: adopt it
            sha1, sha256 = _sha1_b64_and_sha256(target)
            # A path checksum says nothing about bytes; but only complete, verified downloads
            # are ever renamed to a claimed path, so a file there is one.
            if sha1 == asset.checksum or (asset.path_checksum and target.stat().st_size > 0):
                with self.lock:
                    self.staged_sha.setdefault(sha256, asset.id)
                counters["adopted"] = 1
                return {"status": "staged", "reason": None, "sha256": sha256, "size": target.stat().st_size}
        if self.stop.is_set():
            raise _Stopped
        faces = parse_faces(client.faces(asset.id))
        counters["faces"] = 1
        if not faces:
            return self._face_skip(asset, "no_face", 0.0)
        size = (asset.width, asset.height) if asset.width and asset.height else None
        short = None
        if size or asset.is_edited:
            ok, short = self._big_enough(faces, size or (0, 0), asset.is_edited)
            if not ok:
                return self._face_skip(asset, "no_big_face", short)
        if self.stop.is_set():
            raise _Stopped
        target.parent.mkdir(parents=True, exist_ok=True)
        target = path_under(self.files, relpath)  # again, now that the folders exist
        tmp = target.parent / f".tmp-{secrets.token_hex(6)}.part"
        try:
            for attempt in range(self.opts.checksum_retries + 1):
                d = client.download_original(asset.id, tmp)
                counters["downloads"] = counters.get("downloads", 0) + 1
                counters["bytes"] = counters.get("bytes", 0) + d.size
                if self._matches(asset, d, client, tmp, counters):
                    break
                counters["checksum_mismatch"] = counters.get("checksum_mismatch", 0) + 1
                log.warning("immich asset %s: checksum mismatch (attempt %d)", asset.id, attempt + 1)
            else:
                raise ChecksumMismatch(
                    f"downloaded bytes never matched the asset checksum ({self.opts.checksum_retries + 1} tries)"
                )
            if short is None:  # the server did not say how big the original is: measure it
                meta = imageio.read_meta(tmp)
                ok, short = self._big_enough(faces, (meta.width, meta.height))
                if not ok:
                    return self._face_skip(asset, "no_big_face", short)
            if not restage and self.in_store(d.sha256):  # (a file of ours that went missing is restored)
                return {"status": "skipped", "reason": "in_store", "sha256": d.sha256, "face_short": short}
            with self.lock:
                other = self.staged_sha.get(d.sha256)
                if other is None:
                    tmp.replace(target)
                    self.staged_sha[d.sha256] = asset.id
            if other is not None:
                return {"status": "skipped", "reason": "duplicate", "duplicate_of": other, "sha256": d.sha256}
            counters["staged"] = 1
            return {
                "status": "staged",
                "reason": None,
                "sha256": d.sha256,
                "size": d.size,
                "face_short": short,
                "updated_at": None,
                "min_face_short": None,
            }
        finally:
            tmp.unlink(missing_ok=True)


def plan(
    seen: dict[str, tuple[Asset, int]], state: State, opts: StageOptions, files: Path, in_store: Callable[[str], bool]
) -> list[tuple[Asset, int, str, bool]]:
    """Selection, checksum groups, path claims; records every decision; returns the work list
    of (asset, key index, relative path, restage)."""
    groups: dict[str, list[Asset]] = {}
    for aid, (a, k) in seen.items():
        rec = state.get(aid) or {}
        base = {"checksum": a.checksum, "original_path": a.original_path, "key": k}
        reason = selection_reason(a, opts)
        if reason and rec.get("status") != "staged":
            state.set(aid, **base, status="skipped", reason=reason, duplicate_of=None)
            continue
        state.set(aid, **base)
        groups.setdefault(a.checksum, []).append(a)

    winners: list[Asset] = []
    for members in groups.values():
        staged = [a for a in members if state.get(a.id).get("status") == "staged"]
        pool = staged or members
        win = min(pool, key=lambda a: (a.original_path, a.id))
        winners.append(win)
        for a in members:
            if a.id != win.id:
                state.set(a.id, status="skipped", reason="duplicate", duplicate_of=win.id)

    claims = PathClaims(rec["path"] for rec in state.assets.values() if rec.get("path"))
    staged_shas = frozenset(  # bytes staged for an asset the server still lists
        r["sha256"]
        for aid, r in state.assets.items()
        if aid in seen and r.get("status") == "staged" and r.get("sha256")
    )
    todo = []
    for a in sorted(winners, key=lambda a: (a.original_path, a.id)):
        rec = state.get(a.id)
        if _final(rec, a, files, in_store, opts, staged_shas):
            continue
        if rec.get("status") == "skipped" and rec.get("reason") in ("no_face", "no_big_face"):
            state.set(a.id, rechecked=True)
        restage = rec.get("status") == "staged" or bool(rec.get("restage"))  # staged before, file gone since
        if restage:
            state.set(a.id, restage=True)
        if not rec.get("path"):
            rec = state.set(a.id, path=claims.claim(safe_relpath(a.original_path, a.original_file_name or a.id), a.id))
        if rec.get("status") not in ("error",):
            state.set(a.id, status="pending", reason=None, duplicate_of=None)
        todo.append((a, seen[a.id][1], rec["path"], restage))
    return todo


def _fill_totals(report: StageReport, state: State, seen: dict[str, tuple[Asset, int]]) -> None:
    c = state.counts(set(seen))
    report.seen = len(seen)
    report.images = len(seen) - c.get("not_image", 0)
    report.excluded = c.get("excluded", 0)
    report.trashed_or_offline = c.get("trashed", 0) + c.get("offline", 0)
    report.staged = c.get("staged", 0)
    report.in_store = c.get("in_store", 0)
    report.duplicates = c.get("duplicate", 0)
    report.no_face = c.get("no_face", 0)
    report.no_big_face = c.get("no_big_face", 0)
    report.errors = c.get("error", 0)
    report.pending = c.get("pending", 0)


def stage_immich(
    clients: Sequence[ImmichClient],
    opts: StageOptions,
    root: Path,
    in_store: Callable[[str], bool] = lambda sha: False,
) -> StageReport:
    """Stage one label into ``root/files`` with ``root/state.json``; see the module doc.

    An outage, an auth or TLS error or an unexpected response shape end the run early with
    the state saved: the report's ``outcome`` says which (``complete`` otherwise) and its
    ``message`` what to do. Ctrl-C saves the state and re-raises KeyboardInterrupt.
    """
    t0 = time.monotonic()
    files = root / "files"
    files.mkdir(parents=True, exist_ok=True)
    for stale in files.rglob(".tmp-*.part"):  # downloads cut short by a crash
        stale.unlink(missing_ok=True)
    state = State.load(root / "state.json", opts.label, min_interval_s=opts.state_interval_s)
    state.secrets = tuple(s for c in clients for s in c.redaction_secrets())
    report = StageReport(opts.label)
    stats = clients[0].stats
    run_info: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    seen: dict[str, tuple[Asset, int]] = {}
    stop = threading.Event()
    try:
        seen, listing = enumerate_assets(clients, opts)
        report.server_version, report.search_api = listing.server_version, listing.search_api
        report.listing_passes, report.listing_late, report.listing_gap = listing.passes, listing.late, listing.gap
        if listing.gap:
            run_info["listing_gap"] = listing.gap
        todo = plan(seen, state, opts, files, in_store)
        state.save()
        log.info(
            "immich %s: %d assets seen, %d to process with %d workers", opts.label, len(seen), len(todo), opts.workers
        )
        worker = _Worker(clients, opts, files, in_store, stop)
        for aid, rec in state.assets.items():
            if rec.get("status") == "staged" and rec.get("sha256"):
                worker.staged_sha[rec["sha256"]] = aid
        _run_pool(worker, todo, state, report, opts, stop)
        report.outcome = "complete"
    except ImmichOutage as exc:
        report.outcome, report.message = "outage", f"{exc}. State saved; re-run the same command to resume."
    except ImmichAuthError as exc:
        report.outcome, report.message = "auth", str(exc)
    except ImmichTLSError as exc:
        report.outcome, report.message = "tls", str(exc)
    except ResponseShapeError as exc:
        report.outcome, report.message = "failed", f"unexpected Immich response: {exc}"
    except ImmichError as exc:  # the enumeration itself failed after its retries
        report.outcome = "failed"
        report.message = f"could not list the assets: {exc}. State saved; re-run the same command to resume."
    except KeyboardInterrupt:
        report.outcome, report.message = "interrupted", "Interrupted. State saved; re-run the same command to resume."
        raise
    finally:
        stop.set()
        report.elapsed_s = round(time.monotonic() - t0, 2)
        report.requests, report.request_retries = stats.requests, stats.retries
        report.rate_limited = stats.rate_limited
        _fill_totals(report, state, seen)
        report.message = state.redact(report.message)
        report.error_samples = [state.redact(e) for e in report.error_samples]
        run_info.update(
            outcome=report.outcome, processed=report.processed_now, staged=report.staged_now, elapsed_s=report.elapsed_s
        )
        state.runs.append(run_info)
        state.save()
        report.state_writes = state.saves
    return report


def _run_pool(worker: _Worker, todo, state: State, report: StageReport, opts: StageOptions, stop) -> None:
    """Bounded submission; results applied to the state by this (the main) thread."""
    it = iter(todo)
    inflight: dict[Future, str] = {}
    fatal: BaseException | None = None
    last_progress = time.monotonic()
    with ThreadPoolExecutor(max_workers=opts.workers, thread_name_prefix="immich") as pool:
        try:
            while True:
                while fatal is None and not stop.is_set() and len(inflight) < opts.workers * 2:
                    item = next(it, None)
                    if item is None:
                        break
                    inflight[pool.submit(worker.run, *item)] = item[0].id
                if not inflight:
                    break
                done, _ = wait(inflight, timeout=1.0, return_when=FIRST_COMPLETED)
                for fut in done:
                    inflight.pop(fut)
                    try:
                        out = fut.result()
                    except _Stopped:
                        continue
                    except FATAL as exc:
                        if fatal is None:
                            fatal = exc
                            stop.set()
                        continue
                    _apply(out, state, report)
                state.maybe_save()
                if time.monotonic() - last_progress >= opts.progress_interval_s:
                    last_progress = time.monotonic()
                    log.info(
                        "immich %s: %d/%d processed, %d staged this run",
                        opts.label,
                        report.processed_now,
                        len(todo),
                        report.staged_now,
                    )
        except KeyboardInterrupt:
            stop.set()
            for fut in inflight:
                fut.cancel()
            for fut in list(inflight):
                with contextlib.suppress(BaseException):  # best effort: what finished is kept
                    _apply(fut.result(), state, report)
            raise
    if fatal is not None:
        raise fatal


def _apply(out: Outcome, state: State, report: StageReport) -> None:
    rec = state.get(out.asset_id) or {}
    fields = dict(out.fields)
    if fields.get("status") != "error":
        fields["restage"] = None
    if fields.get("status") == "error":
        fields["errors"] = int(rec.get("errors", 0)) + 1
    else:
        fields.setdefault("last_error", None)
    state.set(out.asset_id, **fields)
    c = out.counters
    report.processed_now += 1
    report.staged_now += c.get("staged", 0)
    report.adopted_now += c.get("adopted", 0)
    report.fetched_faces_now += c.get("faces", 0)
    report.downloads_now += c.get("downloads", 0)
    report.bytes_now += c.get("bytes", 0)
    report.checksum_mismatches += c.get("checksum_mismatch", 0)
    report.external_verified_now += c.get("external_verified", 0)
    report.rechecked_now += 1 if rec.get("rechecked") else 0
    if rec.get("rechecked"):
        state.set(out.asset_id, rechecked=None)
    if c.get("error") and len(report.error_samples) < 10:
        report.error_samples.append(f"{out.asset_id}: {fields.get('last_error', '')}")
