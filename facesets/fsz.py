"""roop-unleashed face-set bundles (``.fsz``).

What roop reads (../shared/reference/roop-fsz-contract.md): a plain ZIP archive, extracted
with ``extractall``; only names ending in lowercase ``.png`` at the archive root are loaded,
each decoded by OpenCV as 8-bit 3-channel colour; every face detected in every PNG joins the
set. So a bundle here is exactly that and nothing else: ``0.png, 1.png, …`` at the root, in
the order given (best first), ASCII names, entries stored (PNG is compressed already).

Bundles are byte-for-byte reproducible: entries carry a fixed timestamp and permissions, so
the same crops give the same ``.fsz`` (a re-run changes nothing). ``BundleCache`` keeps finished
bundles by a digest of their inputs (``bundle_digest``: the entries' content keys, in order), so
an export whose set did not change links the bundle it made before instead of writing it again:
the output file is the same inode, with the same bytes and mtime.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

from facesets.atomic import TMP_PREFIX, atomic_path
from facesets.links import link_or_copy

log = logging.getLogger(__name__)

ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest date ZIP can store: fixed, so bundles are reproducible
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ENTRY_RE = re.compile(r"^(0|[1-9][0-9]*)\.png$")
FSZ_FORMAT = 1  # bump when write_fsz changes the bytes it writes for the same PNGs: BundleCache is keyed by it


def entry_name(index: int) -> str:
    """Name of the ``index``-th entry: ``0.png``, ``1.png``, … (roop's own naming)."""
    return f"{index}.png"


def write_fsz(target: str | os.PathLike[str], pngs: Sequence[bytes]) -> None:
    """Write a bundle of PNG images (``pngs[i]`` becomes ``i.png``), atomically."""
    for i, data in enumerate(pngs):
        if not data.startswith(PNG_SIGNATURE):
            raise ValueError(f"{target}: entry {i} is not PNG data")
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for i, data in enumerate(pngs):
            info = zipfile.ZipInfo(entry_name(i), date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            info.create_system = 3  # unix, so the permissions above are what extractors see
            zf.writestr(info, data)


def write_fsz_from_files(target: str | os.PathLike[str], files: Sequence[str | os.PathLike[str]]) -> None:
    write_fsz(target, [Path(f).read_bytes() for f in files])


def bundle_digest(entry_keys: Sequence[str]) -> str:
    """The cache key of a bundle: its entries' content keys (e.g. crop-cache keys) in bundle order.

    Equal keys mean equal PNG bytes in equal order, hence an equal bundle (``write_fsz`` is
    reproducible); nothing about when or where it was made enters it.
    """
    return hashlib.sha256(json.dumps([FSZ_FORMAT, list(entry_keys)]).encode()).hexdigest()


class BundleCache:
    """Finished bundles by ``bundle_digest`` (``<folder>/<digest>.fsz``), placed into outputs as hard links.

    ``folder`` None: no cache, every bundle is written. When the output is on another device (a
    link cannot be made) the cache is left alone for the rest of the run and bundles are written
    directly. ``prune`` (after the output was swapped in) removes the entries this run did not
    use; outputs that link them keep their own name of the bytes.
    """

    def __init__(self, folder: str | os.PathLike[str] | None) -> None:
        self.dir = Path(folder) if folder is not None else None
        self.used: set[str] = set()
        self.reused = 0
        self.written = 0

    def place(self, target: str | os.PathLike[str], digest: str, files: Sequence[str | os.PathLike[str]]) -> None:
        """``target`` becomes the bundle of ``files`` (whose ``bundle_digest`` is ``digest``)."""
        if self.dir is None:
            write_fsz_from_files(target, files)
            self.written += 1
            return
        entry = self.dir / f"{digest}.fsz"
        for _ in range(3):
            fresh = not entry.exists()
            if fresh:
                write_fsz_from_files(entry, files)
            try:
                linked = link_or_copy(entry, target)
            except FileNotFoundError:  # pruned meanwhile by another run sharing the folder: make it again
                continue
            self.used.add(entry.name)
            self.written += fresh
            self.reused += not fresh
            if not linked:
                log.info("fsz: %s is on another device than %s: bundles are written, not linked", target, self.dir)
                self.dir = None
            return
        write_fsz_from_files(target, files)
        self.written += 1

    def prune(self) -> int:
        """Remove the entries (and temp leftovers) this run did not use; returns how many."""
        if self.dir is None or not self.dir.is_dir():
            return 0
        gone = 0
        for p in self.dir.iterdir():
            if p.name not in self.used and (p.suffix == ".fsz" or p.name.startswith(TMP_PREFIX)):
                p.unlink(missing_ok=True)
                gone += 1
        return gone


def roop_entries(names: Sequence[str]) -> list[str]:
    """The entries roop would load from these archive names: root-level, ending in lowercase .png."""
    return [n for n in names if "/" not in n and "\\" not in n and n.endswith(".png")]


def layout_problems(path: str | os.PathLike[str]) -> list[str]:
    """What in a bundle breaks our layout contract (empty list = fine).

    Checks: a readable ZIP; every entry named ``N.png`` (ASCII, lowercase, root level) with N
    running 0..n-1; PNG data in each; at least one entry.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            problems = []
            names = [i.filename for i in infos]
            for info in infos:
                if not ENTRY_RE.match(info.filename):
                    problems.append(f"entry {info.filename!r} is not N.png at the root")
                    continue
                with zf.open(info) as fh:
                    if fh.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
                        problems.append(f"entry {info.filename!r} is not PNG data")
            if sorted(names) != sorted(entry_name(i) for i in range(len(names))):
                problems.append("entries are not numbered 0..n-1 without gaps")
            if not names:
                problems.append("no entries")
            return problems
    except zipfile.BadZipFile as exc:
        return [f"not a ZIP archive: {exc}"]
