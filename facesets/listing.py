"""The ``stage`` step: list a source folder into a listing table.

Recursive scan with include/exclude globs (symlinked folders followed once, loops cut),
streamed sha256 of every file in parallel, byte-identical files grouped under one
canonical path with the others as aliases, EXIF orientation and capture time read once.
A per-source hash cache (path, size, mtime) makes re-staging a large library cheap.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from facesets import imageio, schema
from facesets.atomic import atomic_path
from facesets.globs import matches, selected

log = logging.getLogger(__name__)
CHUNK = 1 << 20


@dataclass(frozen=True)
class FileEntry:
    path: str
    relpath: str
    size: int = -1
    mtime_ns: int = -1
    error: str | None = None


@dataclass(frozen=True)
class FileFacts:
    """What stage learns about one file (cached by path + size + mtime)."""

    path: str
    relpath: str
    size: int
    mtime_ns: int
    sha256: str | None
    width: int | None
    height: int | None
    orientation: int | None
    capture_time: str | None
    error: str | None


def walk(root: Path, include: Iterable[str], exclude: Iterable[str]) -> Iterator[FileEntry]:
    """Yield selected files under ``root`` in sorted order; errors become entries."""
    include, exclude = tuple(include), tuple(exclude)
    seen_dirs: set[tuple[int, int]] = set()
    root_str = os.path.abspath(root)

    def failed(path: str, rel: str, reason: str) -> FileEntry:
        return FileEntry(_printable(path), _printable(rel), error=reason)

    def rec(dir_path: str) -> Iterator[FileEntry]:
        try:
            st = os.stat(dir_path)
        except OSError as exc:
            rel = os.path.relpath(dir_path, root_str)
            yield failed(dir_path, rel, f"cannot read folder: {exc.strerror}")
            return
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:
            log.warning("skipping folder already visited (symlink loop?): %s", dir_path)
            return
        seen_dirs.add(key)
        try:
            with os.scandir(dir_path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            rel = os.path.relpath(dir_path, root_str)
            yield failed(dir_path, rel, f"cannot list folder: {exc.strerror}")
            return
        for entry in entries:
            rel = os.path.relpath(entry.path, root_str).replace(os.sep, "/")
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                if not _dir_excluded(rel, exclude):
                    yield from rec(entry.path)
                continue
            if not selected(rel, include, exclude):
                continue
            try:
                st_f = entry.stat(follow_symlinks=True)
            except OSError as exc:
                reason = "symlink loop" if exc.errno == 40 else f"cannot stat: {exc.strerror}"
                if entry.is_symlink() and exc.errno == 2:
                    reason = "broken symlink"
                yield failed(entry.path, rel, reason)
                continue
            if not stat.S_ISREG(st_f.st_mode):  # FIFO, socket, device: recorded, never opened
                yield failed(entry.path, rel, f"not a regular file ({imageio.file_kind(st_f.st_mode)})")
                continue
            if not _storable(entry.path):
                yield failed(entry.path, rel, "file name is not valid UTF-8 (cannot be recorded; rename the file)")
                continue
            yield FileEntry(entry.path, rel, st_f.st_size, st_f.st_mtime_ns)

    if not os.path.isdir(root_str):
        raise FileNotFoundError(f"source folder not found: {root_str}")
    yield from rec(root_str)


def _storable(path: str) -> bool:
    """Tables store paths as UTF-8; a name with undecodable bytes (surrogate-escaped) cannot be."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(path: str) -> str:
    """A UTF-8-safe form of a path for error records: undecodable bytes become ``\\xNN``."""
    return path if _storable(path) else os.fsencode(path).decode("utf-8", "backslashreplace")


def _dir_excluded(rel_dir: str, exclude: Iterable[str]) -> bool:
    """A folder is pruned when a pattern excludes everything beneath it."""
    probe = rel_dir + "/__probe__/__probe__"
    return any(p.endswith("/**") and matches(probe, (p,)) for p in exclude)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_facts(entry: FileEntry) -> FileFacts:
    """Hash one file and read its header (never raises)."""
    if entry.error:
        return FileFacts(
            entry.path, entry.relpath, entry.size, entry.mtime_ns, None, None, None, None, None, entry.error
        )
    try:
        digest = sha256_file(entry.path)
    except PermissionError:
        return FileFacts(
            entry.path, entry.relpath, entry.size, entry.mtime_ns, None, None, None, None, None, "permission denied"
        )
    except OSError as exc:
        return FileFacts(
            entry.path,
            entry.relpath,
            entry.size,
            entry.mtime_ns,
            None,
            None,
            None,
            None,
            None,
            f"cannot read: {exc.strerror}",
        )
    try:
        meta = imageio.read_meta(entry.path)
        w, h, o, c = meta.width, meta.height, meta.orientation, meta.capture_time
    except imageio.ImageLoadError:
        w = h = o = c = None  # embed records the precise reason
    except Exception:  # noqa: BLE001 - a hostile header must not stop the listing
        w = h = o = c = None
    return FileFacts(entry.path, entry.relpath, entry.size, entry.mtime_ns, digest, w, h, o, c, None)


def load_hash_cache(path: Path) -> dict[tuple[str, int, int], FileFacts]:
    if not path.exists():
        return {}
    try:
        df = pd.read_parquet(path)
    except Exception:  # noqa: BLE001 - a broken cache only costs time
        log.warning("ignoring unreadable stage cache %s", path)
        return {}
    out = {}
    for row in df.itertuples(index=False):
        facts = FileFacts(**{k: (None if pd.isna(v) else v) for k, v in row._asdict().items()})
        out[(facts.path, int(facts.size), int(facts.mtime_ns))] = facts
    return out


def scan(
    root: Path,
    include: Iterable[str],
    exclude: Iterable[str],
    workers: int = 4,
    cache: dict[tuple[str, int, int], FileFacts] | None = None,
    retry: set[str] | None = None,
) -> list[FileFacts]:
    """The facts of every selected file; files in ``retry`` are hashed again whatever the cache says."""
    cache = cache or {}
    entries = list(walk(root, include, exclude))
    if retry:
        cache = {k: v for k, v in cache.items() if k[0] not in retry}
    todo = [e for e in entries if e.error or (e.path, e.size, e.mtime_ns) not in cache]
    log.info("stage %s: %d files, %d to hash", root, len(entries), len(todo))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        fresh = {f.path: f for f in pool.map(file_facts, todo)}
    return [fresh.get(e.path) or cache[(e.path, e.size, e.mtime_ns)] for e in entries]


def group(facts: list[FileFacts], source: str) -> pd.DataFrame:
    """One row per unique content (canonical path + aliases) plus one per unreadable file."""
    rows = []
    by_sha: dict[str, list[FileFacts]] = {}
    for f in facts:
        if f.sha256 is None:
            rows.append(_row(f, [], source))
        else:
            by_sha.setdefault(f.sha256, []).append(f)
    for members in by_sha.values():
        members.sort(key=lambda f: f.relpath)
        rows.append(_row(members[0], [m.path for m in members[1:]], source))
    df = pd.DataFrame(rows, columns=[c.name for c in schema.LISTING])
    return schema.conform(df.sort_values("relpath", kind="stable").reset_index(drop=True), schema.LISTING)


def _row(f: FileFacts, aliases: list[str], source: str) -> dict:
    return {
        "source": source,
        "sha256": f.sha256,
        "path": f.path,
        "relpath": f.relpath,
        "aliases": aliases,
        "size": f.size,
        "mtime_ns": f.mtime_ns,
        "width": f.width,
        "height": f.height,
        "orientation": f.orientation,
        "capture_time": f.capture_time,
        "error": f.error,
    }


def stage_source(
    name: str,
    root: Path,
    include: Iterable[str],
    exclude: Iterable[str],
    out: Path,
    cache_path: Path | None = None,
    workers: int = 4,
) -> pd.DataFrame:
    """List ``root`` into ``out`` (Parquet, atomic) and refresh the hash cache."""
    cache = load_hash_cache(cache_path) if cache_path else {}
    retry = retry_requests(out)
    if retry:
        log.info("stage %s: %d files embed asked to re-list are hashed again", name, len(retry))
    facts = scan(root, include, exclude, workers=workers, cache=cache, retry=retry)
    listing = group(facts, name)
    if cache_path:
        good = [f.__dict__ for f in facts if f.sha256 is not None]
        with atomic_path(cache_path) as tmp:
            pd.DataFrame(good, columns=list(FileFacts.__dataclass_fields__)).to_parquet(tmp, index=False)
    schema.write_table(listing, schema.LISTING, out)
    n_alias = int(listing["aliases"].map(len).sum())
    log.info(
        "stage %s: %d files -> %d unique, %d aliases, %d unreadable",
        name,
        len(facts),
        int(listing["sha256"].notna().sum()),
        n_alias,
        int(listing["error"].notna().sum()),
    )
    return listing


def retry_path(faces_table: str | os.PathLike[str]) -> Path:
    """Beside a face table (embed): the files whose record is a condition that may clear
    (an I/O error, a file changed since it was listed), as JSON [{"path", "reason"}]."""
    p = Path(faces_table)
    return p.with_name(p.name.removesuffix(".parquet") + ".retry.json")


def retry_files(listing_out: str | os.PathLike[str]) -> list[Path]:
    """The retry lists embed writes for the listing at ``listing_out`` (rules/embed.smk layout:
    ``<dir>/faces.retry.json`` and ``<dir>/shards/<n>/<i>.faces.retry.json``)."""
    d = Path(listing_out).parent
    return [d / "faces.retry.json", *sorted(d.glob("shards/*/*.faces.retry.json"))]


def retry_requests(listing_out: str | os.PathLike[str]) -> set[str]:
    """Paths embed asked to re-list (unreadable then, or changed since they were listed)."""
    out: set[str] = set()
    for rp in retry_files(listing_out):
        try:
            entries = json.loads(rp.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        out.update(str(e["path"]) for e in entries if isinstance(e, dict) and "path" in e)
    return out


def _stat_token(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"errno {exc.errno}"
    readable = os.access(path, os.R_OK)
    return f"{st.st_mode:o} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns} {st.st_ino} {readable}"


def retry_token(listing_out: str | os.PathLike[str]) -> str:
    """For the stage rule's state: the current stat of every file embed asked to re-list.

    It changes when such a file changes in any way (restored, chmod-ed back, replaced), so the
    next run re-lists the source (``stage_source`` hashes those files again, whatever its hash
    cache says); it stays the same while nothing about them changed, so a condition that
    persists costs no rerun.
    """
    h = hashlib.sha256()
    for p in sorted(retry_requests(listing_out)):
        h.update(f"{p}\0{_stat_token(p)}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]


def fingerprint(root: Path, include: Iterable[str], exclude: Iterable[str]) -> str:
    """Cheap content fingerprint (paths, sizes, mtimes; no hashing) for rerun decisions."""
    h = hashlib.sha256()
    try:
        for e in walk(root, include, exclude):
            h.update(f"{e.relpath}\0{e.size}\0{e.mtime_ns}\0{e.error}\n".encode("utf-8", "surrogateescape"))
    except FileNotFoundError:
        return "missing"
    return h.hexdigest()[:16]
