"""``manifest-merge``: fold the sources' exports into the canonical swap-ready library.

Reads each source's export manifest (in config order), matches every exported faceset to
the identity ledger (``facesets.ledger``), copies the new members' crops into the identity's
folder under ``facesets_swap_ready/`` and rebuilds that identity's bundles. The ledger and
``manifest.json`` are written last, atomically, after a backup of the previous versions.

Crash-safe by construction: every file under an identity folder is derived from the ledger's
member list, so after a crash the same command redoes what was missing, and an export whose
digest the ledger already holds is skipped (applying a source twice changes nothing).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from facesets import crossdedup as X
from facesets import decisions as D
from facesets import ledger as L
from facesets.atomic import TMP_PREFIX, write_json, write_text
from facesets.dedup import DedupOptions
from facesets.errors import InputError
from facesets.fsz import write_fsz_from_files
from facesets.links import link_or_copy, same_file
from facesets.manifests import (
    EXPORT_MANIFEST,
    LEDGER,
    LIBRARY_MANIFEST,
    RESPONSIBLE_USE,
    SET_MANIFEST,
    THIN_MARKER,
    VERSION,
    ExportManifest,
    LibraryManifest,
    read_export_manifest,
)
from facesets.options import build, section
from facesets.thresholds import for_model

log = logging.getLogger(__name__)

LOCK = ".lock"


@dataclass(frozen=True)
class MergeSettings:
    """The ``merge`` section (``backups``, ``lock_timeout``) and what the merge takes from elsewhere;
    no defaults here: ``options.build(MergeSettings, "merge", section, top_n=..., ...)``."""

    top_n: int  # export.top_n: the library's bundles hold the same best N as the exports'
    backups: int
    match_threshold: float | None  # None: the model profile's ``match``
    # source -> its refine.min_faces: a new discovered identity needs that many photos in the library
    min_faces: Mapping[str, int]
    dedup: DedupOptions  # near-duplicate faces across sources
    lock_timeout: float  # seconds a second writer waits for the library lock, then stops
    decisions: Path | None  # the curation decisions file (facesets.decisions); None: no decisions


def merge_settings(
    dedup: DedupOptions,
    merge: Mapping[str, Any] | None = None,
    *,
    top_n: int | None = None,
    min_faces: Mapping[str, int] | None = None,
    decisions: Path | None = None,
) -> MergeSettings:
    """Settings from the ``merge`` section (the schema fills it); ``top_n`` None: ``export.top_n``'s;
    ``min_faces`` None: no source holds a set back; ``decisions`` None: no decisions file."""
    return build(
        MergeSettings,
        "merge",
        merge,
        top_n=top_n if top_n is not None else section("export")["top_n"],
        match_threshold=None,
        min_faces=dict(min_faces or {}),
        dedup=dedup,
        decisions=decisions,
    )


@dataclass(frozen=True)
class ExportBatch:
    source: str
    export_dir: Path
    manifest: ExportManifest
    digest: str


def read_export(source: str, export_dir: Path) -> ExportBatch:
    path = Path(export_dir) / EXPORT_MANIFEST
    try:
        manifest = read_export_manifest(path)
        raw = path.read_bytes()  # the digest: the ledger skips an export it has applied already
    except InputError as exc:
        raise InputError(f"{exc} (the export of source {source!r})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the export manifest of source {source!r}: {exc}") from None
    # absolute: members point at the export until their crop is copied into the library
    return ExportBatch(source, Path(export_dir).resolve(), manifest, hashlib.sha256(raw).hexdigest())


def load_embeddings(face_tables: Sequence[Path], keys: set[str]) -> dict[str, np.ndarray]:
    """Unit embeddings of ``keys`` from the source face tables."""
    out: dict[str, np.ndarray] = {}
    for t in face_tables:
        if not keys - out.keys():
            break
        df = pd.read_parquet(t, columns=["face_key", "embedding"])
        df = df[df["face_key"].isin(keys)]
        for k, e in zip(df["face_key"], df["embedding"], strict=True):
            v = np.asarray(e, np.float64)
            out[k] = v / (np.linalg.norm(v) or 1.0)
    return out


def _proposals(batch: ExportBatch, parent: str | None = None) -> list[L.Proposal]:
    """The batch's facesets as proposals (``parent``: the batch is the era split of that identity)."""
    model_id = batch.manifest.get("model_id", "")
    props = []
    for e in batch.manifest["facesets"]:
        crops = [{**c, "file": str(batch.export_dir / c["file"])} for c in e.get("crops", [])]
        route = e.get("route_to")
        props.append(
            L.Proposal(
                source=batch.source,
                name=e["name"],
                kind="era" if parent else e.get("kind", "discovered"),
                model_id=model_id,
                centroid=np.asarray(e.get("centroid") or [], np.float64),
                crops=crops,
                label=e.get("label"),
                route_to=route,
                parent=parent,
                thin=bool(e.get("thin", False)),
            )
        )
    return props


def identity_dir(ident: L.Identity) -> str:
    return f"_thin/{ident.name}" if ident.thin else ident.name


def _ranked(ident: L.Identity) -> list[tuple[str, L.Member]]:
    return sorted(ident.members.items(), key=lambda kv: (-kv[1].score, kv[0]))


def _markers(ident: L.Identity) -> dict[str, str]:
    if ident.kind == "identities":
        return {f"{ident.label or ident.name}.txt": f"hand-sorted identity from folder {ident.label!r}\n"}
    if ident.kind == "era":
        m = {f"{ident.name}.txt": f"era of {ident.parent}\n"}
        if ident.thin:
            m[THIN_MARKER] = "fewer faces than min_era_faces: kept apart under _thin/\n"
        return m
    return {f"{s}.txt": f"discovered in source {s}\n" for s in ident.sources}


@dataclass(frozen=True)
class ExportBundle:
    """A bundle an export wrote, and its entries' files in bundle order."""

    path: Path
    files: tuple[Path, ...]


def export_bundles(batches: Sequence[ExportBatch]) -> dict[tuple[str, ...], ExportBundle]:
    """The exports' bundles by the face keys they hold, in bundle order (top and all)."""
    out: dict[tuple[str, ...], ExportBundle] = {}
    for b in batches:
        top_n = int((b.manifest.get("settings") or {}).get("top_n") or 0)
        for e in b.manifest.get("facesets", []):
            crops = e.get("crops", [])
            keys = tuple(c["face_key"] for c in crops)
            files = tuple(b.export_dir / c["file"] for c in crops)
            found = e.get("bundles") or {}
            if found.get("all"):
                out.setdefault(keys, ExportBundle(b.export_dir / found["all"], files))
            if found.get("top") and top_n:
                out.setdefault(keys[:top_n], ExportBundle(b.export_dir / found["top"], files[:top_n]))
    return out


def _place_bundle(target: Path, pngs: Sequence[Path], made: Mapping[tuple[str, ...], ExportBundle], keys) -> bool:
    """``target`` becomes the bundle of ``pngs``: a link to an export's bundle when that one holds
    these very files (the same inodes, in the same order: then its bytes are this bundle's), else
    written. True when linked."""
    hit = made.get(tuple(keys))
    if (
        hit is not None
        and len(hit.files) == len(pngs)
        and all(same_file(a, b) for a, b in zip(pngs, hit.files, strict=True))
    ):
        try:
            return link_or_copy(hit.path, target)
        except FileNotFoundError:
            pass  # the export is gone: write it
    write_fsz_from_files(target, pngs)
    return False


def build_identity(
    ident: L.Identity,
    swap_ready: Path,
    top_n: int,
    made: Mapping[tuple[str, ...], ExportBundle] | None = None,
) -> bool:
    """Make ``<dir>/`` match the ledger: crops, bundles, markers, manifest. True when it changed.

    New members' ``crop`` points at their export's file (or the library's ``.faces/`` keep); it
    is hard-linked in (copied where links cannot be made) and repointed at the library's name
    (relative to ``swap_ready``), so the ledger never depends on an export again. A folder that
    moved (an era leaving ``_thin/``) is rebuilt from the old folder's files. ``made``: the
    exports' bundles (``export_bundles``); a bundle of the very same crop files is linked, not
    written again. An identity whose member list is unchanged is not touched at all.
    """
    d = swap_ready / identity_dir(ident)
    ranked = _ranked(ident)
    for key, m in ranked:
        if (d / "crops" / f"{key}.png").exists():
            m.crop = f"{identity_dir(ident)}/crops/{key}.png"
    state = hashlib.sha256(json.dumps([[k, m.score, m.path] for k, m in ranked]).encode()).hexdigest()
    man_path = d / SET_MANIFEST
    if man_path.exists():
        try:
            if json.loads(man_path.read_text(encoding="utf-8")).get("members_digest") == state:
                return False
        except json.JSONDecodeError:
            pass
    crops = d / "crops"
    crops.mkdir(parents=True, exist_ok=True)
    for key, m in ranked:
        dest = crops / f"{key}.png"
        if not dest.exists():  # from the export (absolute path), .faces/ or the old folder (relative)
            link_or_copy(m.crop if os.path.isabs(m.crop) else swap_ready / m.crop, dest)
        m.crop = dest.relative_to(swap_ready).as_posix()  # from now on the library's own name
    pngs = [crops / f"{k}.png" for k, _ in ranked]
    keys = [k for k, _ in ranked]
    made = made or {}
    _place_bundle(d / f"{ident.name}_top{top_n}.fsz", pngs[:top_n], made, keys[:top_n])
    _place_bundle(d / f"{ident.name}_all.fsz", pngs, made, keys)
    for name, text in _markers(ident).items():
        write_text(d / name, text)
    write_json(
        man_path,
        {
            "number": ident.number,
            "name": ident.name,
            "kind": ident.kind,
            "responsible_use": RESPONSIBLE_USE,
            "members_digest": state,
            "crops": [
                {
                    "file": f"crops/{k}.png",
                    "rank": r,
                    "face_key": k,
                    "score": m.score,
                    "source": m.source,
                    "path": m.path,
                }
                for r, (k, m) in enumerate(ranked)
            ],
        },
    )
    return True


def _entry(ident: L.Identity, top_n: int) -> dict:
    d = identity_dir(ident)
    return {
        "number": ident.number,
        "name": ident.name,
        "kind": ident.kind,
        "provenance": {"sources": list(ident.sources), "label": ident.label, "parent": ident.parent},
        "faces": len(ident.members),
        "unique_images": len(ident.photos()),
        "dir": d,
        "bundles": {"top": f"{d}/{ident.name}_top{top_n}.fsz", "all": f"{d}/{ident.name}_all.fsz"},
    }


def canonical_manifest(ledger: L.Ledger, top_n: int) -> LibraryManifest:
    idents = sorted(ledger.identities, key=lambda i: i.number)
    return {
        "version": VERSION,
        "responsible_use": RESPONSIBLE_USE,
        "facesets": [_entry(i, top_n) for i in idents if not i.thin],
        "thin_eras": [_entry(i, top_n) for i in idents if i.thin],
    }


class _Pixels:
    """Grey working copies of crops (``crossdedup.load_crop``), read once per merge."""

    def __init__(self, swap_ready: Path) -> None:
        self.swap_ready = swap_ready
        self.paths: dict[str, str] = {}
        self._cache: dict[str, np.ndarray | None] = {}

    def path_of(self, crop: str) -> str:
        return crop if os.path.isabs(crop) else str(self.swap_ready / crop)

    def __call__(self, key: str) -> np.ndarray | None:
        if key not in self._cache:
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = X.load_crop(self.paths[key]) if key in self.paths else None
        return self._cache[key]

    def phash(self, key: str, crop: str) -> str | None:
        self.paths[key] = self.path_of(crop)
        grey = self(key)
        return X.hash_hex(X.crop_hash(grey)) if grey is not None else None


def _drop_duplicates(
    ident: L.Identity | None,
    fresh: Sequence[dict],
    pixels: _Pixels,
    emb: Mapping[str, np.ndarray],
    opts: DedupOptions,
    face_distance: float,
) -> dict[str, str]:
    """fresh face key -> the member (or better fresh face) it is a near-duplicate of."""
    members = []
    for key, m in sorted(ident.members.items()) if ident is not None else []:
        if m.phash is None:  # a ledger written before the library compared crops
            m.phash = pixels.phash(key, m.crop)
        else:
            pixels.paths[key] = pixels.path_of(m.crop)
        members.append(X.face_of(key, m.phash, emb))
    new = []
    for c in sorted(fresh, key=lambda c: (-float(c["score"]), c["face_key"])):
        c["phash"] = c.get("phash") or pixels.phash(c["face_key"], c["file"])
        new.append(X.face_of(c["face_key"], c["phash"], emb))
    return X.duplicates_of(new, members, pixels, opts, face_distance)


def _note(kind: str, p: L.Proposal, message: str, **extra: Any) -> dict:
    return {"kind": kind, "source": p.source, "entry": p.name, **extra, "message": message}


def merge_batches(
    ledger: L.Ledger,
    batches: Sequence[ExportBatch],
    face_tables: Sequence[Path],
    settings: MergeSettings,
    parents: Mapping[str, str] | None = None,
    swap_ready: Path | None = None,
) -> list[L.MergeChange]:
    """Apply the batches that changed since the last merge; returns what changed.

    ``parents``: batch source -> identity name, for the era-split batches. What the merge
    could not resolve by itself (labels in conflict, a set held below ``min_faces``,
    near-duplicates left out) is kept as notes in ``ledger.batches[source]["notes"]``.
    """
    changes: list[L.MergeChange] = []
    resolved: dict[str, int] = {}
    parents = parents or {}
    pixels = _Pixels(Path(swap_ready) if swap_ready is not None else Path.cwd())
    changed = [b for b in batches if ledger.batches.get(b.source, {}).get("digest") != b.digest]
    props_of = {b.source: _proposals(b, parents.get(b.source)) for b in changed}
    # sets held below min_faces by earlier merges: an identity that came since may take them
    held_before = {
        b.source: [p for p in _proposals(b, parents.get(b.source)) if p.name in _held(ledger, b.source)]
        for b in batches
        if b.source not in props_of and _held(ledger, b.source)
    }
    keys = {c["face_key"] for props in props_of.values() for p in props for c in p.crops}
    keys |= {c["face_key"] for props in held_before.values() for p in props for c in p.crops}
    if keys:  # members too: a new face is compared with the identity's faces by embedding
        keys |= {k for i in ledger.identities for k in i.members}
    emb = load_embeddings(face_tables, keys) if keys else {}  # one read of the face tables
    run = _Run(ledger, settings, resolved, ledger.owner(), emb, pixels)
    for b in batches:
        if b.source not in props_of:
            prev = ledger.batches.get(b.source, {})
            resolved.update({f"{b.source}/{n}": v for n, v in prev.get("entries", {}).items()})
            log.info("manifest-merge: %s unchanged since the last merge", b.source)
            continue
        entries: dict[str, int] = {}
        notes: list[dict] = []
        for p in props_of[b.source]:
            ch = _merge_one(run, p, notes)
            if ch is None:
                continue
            entries[p.name] = ch.number
            resolved[f"{b.source}/{p.name}"] = ch.number
            if ch.added:
                changes.append(ch)
                log.info(
                    "manifest-merge: %s/%s -> %s (#%d, %s, +%d faces)",
                    b.source,
                    p.name,
                    ch.name,
                    ch.number,
                    "new" if ch.created else "existing",
                    len(ch.added),
                )
        for n in notes:
            log.warning("manifest-merge: %s", n["message"])
        ledger.batches[b.source] = {"digest": b.digest, "entries": entries, "notes": notes}
    # Last, every held set once more, against the whole merged library: whether a set joins an
    # identity must not depend on whether that identity's source is listed before or after it.
    for b in batches:
        props = held_before.get(b.source) or [
            p for p in props_of.get(b.source, []) if p.name in _held(ledger, b.source)
        ]
        for p in props:
            ch = _retry_held(run, b.source, p)
            if ch is not None and ch.added:
                changes.append(ch)
                log.info(
                    "manifest-merge: held %s/%s joins %s (#%d, +%d faces)",
                    b.source,
                    p.name,
                    ch.name,
                    ch.number,
                    len(ch.added),
                )
    return changes


def _held(ledger: L.Ledger, source: str) -> set[str]:
    return {n["entry"] for n in ledger.batches.get(source, {}).get("notes", []) if n["kind"] == "held"}


@dataclass
class _Run:
    """What every proposal of one merge works on: the ledger and the lookups made once per merge."""

    ledger: L.Ledger
    settings: MergeSettings
    resolved: dict[str, int]  # "<source>/<entry>" -> identity number, as resolved so far
    owner: dict[str, int]  # face key -> identity number
    emb: Mapping[str, np.ndarray]  # face key -> unit embedding
    pixels: _Pixels
    by_source: dict[str, dict[str, list[L.Member]]] = field(default_factory=dict)

    def members_of(self, source: str) -> dict[str, list[L.Member]]:
        """face key -> the members of ``source`` with that key (eras share keys), built once per merge.

        Members added later in the merge need no relocation: they carry the export's path already."""
        if source not in self.by_source:
            self.by_source[source] = L.members_by_key(self.ledger, source)
        return self.by_source[source]

    def threshold(self, p: L.Proposal) -> float:
        """The match threshold: the setting, or the model profile's ``match``."""
        thr = self.settings.match_threshold
        return thr if thr is not None else for_model(p.model_id).match


def _retry_held(run: _Run, source: str, p: L.Proposal) -> L.MergeChange | None:
    """A held set joins the identity it matches now (it never creates one: it is still too small)."""
    ledger, resolved = run.ledger, run.resolved
    if L.match(ledger, p, run.threshold(p), resolved, run.owner) is None:
        return None
    notes: list[dict] = []
    ch = _merge_one(run, p, notes)
    if ch is None:
        return None
    rec = ledger.batches[source]
    rec["entries"] = {**rec.get("entries", {}), p.name: ch.number}
    rec["notes"] = [n for n in rec.get("notes", []) if not (n["kind"] == "held" and n["entry"] == p.name)] + notes
    resolved[f"{source}/{p.name}"] = ch.number
    return ch


def _merge_one(run: _Run, p: L.Proposal, notes: list[dict]) -> L.MergeChange | None:
    """One proposal: relocate, match (labels name identities), drop duplicates, gate, apply."""
    ledger, settings, resolved, owner, emb, pixels = run.ledger, run.settings, run.resolved, run.owner, run.emb, run.pixels
    thr = run.threshold(p)
    moved = L.relocate(ledger, p.source, p.crops, run.members_of(p.source))
    if moved:
        notes.append(_note("relocated", p, f"{p.source}/{p.name}: {moved} members' photos recorded at their new path"))
    if p.kind == "identities":
        number, label_notes = L.label_target(ledger, p, thr, owner)
        notes.extend(label_notes)
    else:
        number = L.match(ledger, p, thr, resolved, owner)
    own = L.owner_for(ledger, p, owner)
    fresh = [dict(c) for c in L.fresh_crops(ledger, p, number, own)]
    ident = ledger.by_number(number) if number is not None else None
    dups = _drop_duplicates(ident, fresh, pixels, emb, settings.dedup, thr / 2.0)
    if dups:
        where = f"faces already in #{ident.number} {ident.name}" if ident is not None else "better faces of this set"
        notes.append(
            _note(
                "duplicates",
                p,
                f"{p.source}/{p.name}: {len(dups)} near-duplicate faces of {where} left out",
                identity=number,
                faces=dict(sorted(dups.items())),
            )
        )
    kept = [c for c in fresh if c["face_key"] not in dups]
    need = int(settings.min_faces.get(p.source, 0))
    photos = len({c["sha256"] for c in kept})
    if number is None and p.kind in ("discovered", "routed") and photos < need and p.crops:
        notes.append(
            _note(
                "held",
                p,
                f"{p.source}/{p.name}: {photos} photos after the export's gates and the library's duplicate "
                f"check, below refine.min_faces {need}: not a library identity until it grows",
                photos=photos,
                min_faces=need,
            )
        )
        return None
    phashes = {c["face_key"]: c.get("phash") for c in kept}
    crops = [{**c, "phash": phashes[c["face_key"]]} if c["face_key"] in phashes else c for c in p.crops]
    crops = [c for c in crops if c["face_key"] not in dups]
    before = ident.name if ident is not None else None
    ch = L.apply(ledger, replace(p, crops=crops), number, emb, owner)
    if ident is not None and ident.name != before:
        log.info("manifest-merge: %s/%s names #%d %s -> %s", p.source, p.name, ident.number, before, ident.name)
    if ch is not None and p.kind == "identities":
        split = L.label_split(ledger, p, ch.number, owner)
        if split is not None:
            notes.append({**split, "entry": p.name})
    return ch


def merge_notes(ledger: L.Ledger) -> list[dict]:
    """Every note of the batches the ledger holds (conflicts, held sets, duplicates), in batch order."""
    return [n for b in ledger.batches.values() for n in b.get("notes", [])]


@contextlib.contextmanager
def library_lock(swap_ready: Path, timeout: float) -> Iterator[None]:
    """Hold the library's exclusive write lock (``flock`` on ``<library>/.lock``) for the block.

    A second writer waits, saying which process holds the lock, and stops with a clear error
    after ``timeout`` seconds. The kernel releases the lock when its process dies, so a lock
    file left by a killed merge never blocks the next one (the pid in it is only information).
    """
    path = Path(swap_ready) / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = path.read_text(encoding="utf-8", errors="replace").strip() or "another process"
            msg = f"manifest-merge: {swap_ready} is being merged by {holder}; waiting (up to {timeout:g} s)"
            log.warning(msg)
            print(msg, file=sys.stderr, flush=True)
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise RuntimeError(
                            f"{path}: the library is still locked by {holder} after {timeout:g} s; "
                            "run manifest-merge again when that merge has finished (nothing was changed)"
                        ) from None
                    time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock


def clean_leftovers(swap_ready: Path) -> list[str]:
    """Remove what a crashed merge left: ``.tmp-*`` files and folders, ``.old-*`` swaps, half-written backups."""
    gone = []
    for p in sorted(Path(swap_ready).rglob(f"{TMP_PREFIX}*")) + sorted(Path(swap_ready).glob(".old-*")):
        if not p.exists() or p.parent.name == L.BACKUP_DIR:
            continue
        shutil.rmtree(p) if p.is_dir() else p.unlink()
        gone.append(p.relative_to(swap_ready).as_posix())
    gone += [p.relative_to(swap_ready).as_posix() for p in L.clean_backups(swap_ready)]
    if gone:
        log.info("manifest-merge: removed crash leftovers %s", gone)
    return gone


def stale_folders(ledger: L.Ledger, swap_ready: Path) -> list[Path]:
    """Identity folders whose identity now lives elsewhere (renamed by a label, an era that left _thin/)."""
    where = {i.number: identity_dir(i) for i in ledger.identities}
    out = []
    for man in sorted([*swap_ready.glob(f"*/{SET_MANIFEST}"), *swap_ready.glob(f"_thin/*/{SET_MANIFEST}")]):
        try:
            number = json.loads(man.read_text(encoding="utf-8")).get("number")
        except (OSError, json.JSONDecodeError):
            continue
        d = man.parent.relative_to(swap_ready).as_posix()
        if number in where and where[number] != d:
            out.append(man.parent)
    return out


def run_merge(
    exports: Sequence[tuple[str, Path]],
    face_tables: Sequence[Path],
    swap_ready: Path,
    settings: MergeSettings,
    eras: Sequence[tuple[str, Path]] = (),
) -> dict:
    """``facesets manifest-merge``: update ``swap_ready/`` in place; returns a summary.

    ``eras``: (identity name, era-split export dir) pairs, folded in after the sources.
    The whole merge holds the library lock: the ledger is read after the lock is taken.
    """
    swap_ready = Path(swap_ready)
    swap_ready.mkdir(parents=True, exist_ok=True)
    batches = [read_export(s, d) for s, d in exports]
    batches += [read_export(f"eras:{name}", d) for name, d in eras]
    with library_lock(swap_ready, settings.lock_timeout):
        clean_leftovers(swap_ready)
        return _merge_locked(batches, face_tables, swap_ready, settings, {f"eras:{n}": n for n, _ in eras})


def link_kept_crops(ledger: L.Ledger, batches: Sequence[ExportBatch], swap_ready: Path) -> int:
    """``.faces/<key>.png`` as a hard link of the export's crop, for members and candidates that
    come from an export whose files are never rewritten in place (``immutable_files``, written by
    export-swap: its crops are themselves links to the crop cache), so a crop is stored once.
    ``decisions.curate`` then finds them kept and keeps the rest (other exports') as copies.
    Returns how many were linked."""
    fixed = {b.export_dir for b in batches if b.manifest.get("immutable_files")}
    if not fixed:
        return 0
    srcs: dict[str, Path] = {}
    for ident in ledger.identities:
        for key, m in ident.members.items():
            if os.path.isabs(m.crop) and Path(m.crop).parent.parent.parent in fixed:  # <export>/<set>/crops/N.png
                srcs.setdefault(key, Path(m.crop))
    for b in batches:
        entries = ledger.batches.get(b.source, {}).get("entries", {})
        if b.export_dir in fixed:
            for c in b.manifest.get("candidates") or []:
                if c.get("nearest") in entries and D.FACE_KEY.match(c.get("face_key", "")):
                    srcs.setdefault(c["face_key"], b.export_dir / c.get("file", ""))
    linked = 0
    for key, src in srcs.items():
        dest = swap_ready / D.FACES_DIR / f"{key}.png"
        if not dest.exists() and src.is_file():
            linked += link_or_copy(src, dest)
    return linked


def _merge_locked(
    batches: Sequence[ExportBatch],
    face_tables: Sequence[Path],
    swap_ready: Path,
    settings: MergeSettings,
    parents: Mapping[str, str],
) -> dict:
    ledger_path, manifest_path = swap_ready / LEDGER, swap_ready / LIBRARY_MANIFEST
    ledger = L.load(ledger_path)
    changes = merge_batches(ledger, batches, face_tables, settings, parents, swap_ready)
    # Curation (facesets.decisions): the ledger stays as found; the library is built from the
    # decided view of it. Stops naming the decisions file and line before anything is built.
    link_kept_crops(ledger, batches, swap_ready)  # before curate keeps the rest (as copies)
    view = D.curate(ledger, [(b.source, b.export_dir, b.manifest) for b in batches], swap_ready, settings.decisions)
    built = replace(ledger, identities=view.library())
    # New members' crops are copied from the exports now (later exports renumber their files).
    made = export_bundles(batches)
    rebuilt = [i.name for i in built.identities if build_identity(i, swap_ready, settings.top_n, made)]
    for stale in stale_folders(built, swap_ready):  # renamed, or moved in or out of _thin/
        shutil.rmtree(stale)
    D.prune(swap_ready, built.identities, identity_dir)  # merged, hidden, split-off, rejected: gone
    manifest = {**canonical_manifest(built, settings.top_n), **D.manifest_extra(view, ledger, settings.top_n)}
    new_ledger = L.to_json(ledger)
    old_ledger = json.loads(ledger_path.read_text(encoding="utf-8")) if ledger_path.exists() else None
    old_manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.exists() else None
    if new_ledger != old_ledger or manifest != old_manifest:
        L.backup([ledger_path, manifest_path], keep=settings.backups)
        L.save(ledger, ledger_path)
        write_json(manifest_path, manifest)
    else:
        os.utime(manifest_path)  # tell Snakemake the merge ran, without changing a byte
        os.utime(ledger_path)
    notes = merge_notes(ledger)
    return {
        "identities": len(ledger.identities),
        "changed": [{"number": c.number, "name": c.name, "created": c.created, "added": len(c.added)} for c in changes],
        "rebuilt": rebuilt,
        "held": [n for n in notes if n["kind"] == "held"],
        "conflicts": [n for n in notes if n["kind"] in ("label_conflict", "label_split")],
        "duplicates_left_out": sum(len(n.get("faces", {})) for n in notes if n["kind"] == "duplicates"),
        "relocated": [n["message"] for n in notes if n["kind"] == "relocated"],
    }
