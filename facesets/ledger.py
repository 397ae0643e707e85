"""The identity ledger: the user's canonical numbering, which never changes.

``facesets_swap_ready/ledger.json`` sits beside the user-facing ``manifest.json``; both are
written only by ``manifest-merge`` (atomically, after backing up the previous version). The
ledger holds, per identity: its number and name, its kind and provenance, its members (face
keys, which never move to another identity once merged) and a running centroid per embedding
model, so later batches can be matched to it (centroid distance <= the model's ``match``
threshold) before any new number is given.

Everything here is pure over dataclasses; ``facesets.merge`` does the file work.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facesets.atomic import TMP_PREFIX, write_json

LEDGER_VERSION = 1
BACKUP_DIR = ".backup"
KINDS = ("discovered", "identities", "routed", "era")


@dataclass
class Member:
    """One face of an identity, with where its exported crop came from."""

    source: str
    sha256: str
    path: str
    score: float
    crop: str  # the exported crop it was copied from (relative to the output root)
    phash: str | None = None  # 64-bit DCT hash of the crop (hex): the library's near-duplicate check


@dataclass
class Identity:
    number: int
    name: str
    kind: str  # discovered | identities | era (routed entries join existing identities)
    sources: list[str] = field(default_factory=list)
    label: str | None = None  # hand-sorted folder name
    parent: str | None = None  # era split: the identity it was split from
    thin: bool = False  # era split: fewer faces than min_era_faces
    members: dict[str, Member] = field(default_factory=dict)  # face_key -> member
    centroid_sum: dict[str, list[float]] = field(default_factory=dict)  # model_id -> sum of unit embeddings
    centroid_count: dict[str, int] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)  # former names (a label named it, a rename decision)

    def centroid(self, model_id: str) -> np.ndarray | None:
        s = self.centroid_sum.get(model_id)
        if s is None or not self.centroid_count.get(model_id):
            return None
        v = np.asarray(s, np.float64)
        n = np.linalg.norm(v)
        return v / n if n > 0 else None

    def photos(self) -> set[str]:
        return {m.sha256 for m in self.members.values()}


@dataclass
class Ledger:
    identities: list[Identity] = field(default_factory=list)
    # source -> {"digest": export manifest digest, "entries": {entry name: identity number}}
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    version: int = LEDGER_VERSION
    # facesets.decisions: applied decisions, candidates, numbers reserved by splits (never reused)
    curation: dict[str, Any] = field(default_factory=dict)

    def next_number(self) -> int:
        reserved = self.curation.get("reserved", {}).values()
        return max([i.number for i in self.identities] + [int(n) for n in reserved], default=0) + 1

    def by_number(self, number: int) -> Identity:
        for ident in self.identities:
            if ident.number == number:
                return ident
        raise KeyError(number)

    def by_name(self, name: str) -> Identity | None:
        """The identity called ``name`` now, else the one a ``name`` decision calls so (curation
        names, facesets.decisions), else the one that was called so before (aliases)."""
        hit = next((i for i in self.identities if i.name == name), None)
        decided = next((int(n) for n, v in self.curation.get("names", {}).items() if v == name), None)
        hit = hit or next((i for i in self.identities if i.number == decided), None)
        return hit or next((i for i in self.identities if name in i.aliases), None)

    def by_label(self, label: str) -> Identity | None:
        """The (lowest-numbered) non-era identity a hand-sorted folder ``label`` has named."""
        hits = sorted((i for i in self.identities if i.kind != "era" and i.label == label), key=lambda i: i.number)
        return hits[0] if hits else None

    def owner(self) -> dict[str, int]:
        """face_key -> number of the identity it belongs to (eras excluded: they copy members)."""
        return {k: i.number for i in self.identities if i.kind != "era" for k in i.members}


# ---------------------------------------------------------------------------- persistence


def to_json(ledger: Ledger) -> dict:
    return {
        "version": ledger.version,
        "identities": [asdict(i) for i in sorted(ledger.identities, key=lambda i: i.number)],
        "batches": ledger.batches,
        **({"curation": ledger.curation} if ledger.curation else {}),
    }


def from_json(obj: Mapping[str, Any], where: str = "ledger") -> Ledger:
    if obj.get("version") != LEDGER_VERSION:
        raise ValueError(f"{where}: ledger version {obj.get('version')!r} is not {LEDGER_VERSION}")
    idents = []
    for raw in obj.get("identities", []):
        members = {k: Member(**m) for k, m in raw.get("members", {}).items()}
        idents.append(Identity(**{**raw, "members": members}))
    numbers = [i.number for i in idents]
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"{where}: duplicate identity numbers")
    return Ledger(identities=idents, batches=dict(obj.get("batches", {})), curation=dict(obj.get("curation", {})))


def load(path: Path) -> Ledger:
    """The ledger at ``path``, or an empty one when it does not exist yet."""
    path = Path(path)
    if not path.exists():
        return Ledger()
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{path}: the identity ledger is not valid JSON ({exc}); restore it from {path.parent / BACKUP_DIR}"
        ) from None
    return from_json(obj, where=str(path))


def backup(paths: Iterable[Path], keep: int) -> Path | None:
    """Copy the current versions of ``paths`` into ``<dir>/.backup/<timestamp>/`` (keeps the newest ``keep``: merge.backups).

    Atomic: the copies are written (and fsynced) into ``.backup/.tmp-<timestamp>/``, which is
    renamed into place only when complete, so a crash or a full disk never leaves a
    truncated backup under a real name (``clean_backups`` removes the temp folder later).
    """
    existing = [Path(p) for p in paths if Path(p).exists()]
    if not existing:
        return None
    root = existing[0].parent / BACKUP_DIR
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{time.time_ns() % 1_000_000_000:09d}"
    dest, tmp = root / stamp, root / f"{TMP_PREFIX}{stamp}"
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        for p in existing:
            shutil.copy2(p, tmp / p.name)
            with open(tmp / p.name, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    old = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(TMP_PREFIX))
    for d in old[:-keep]:
        shutil.rmtree(d, ignore_errors=True)
    return dest


def _complete_backup(d: Path) -> bool:
    """A backup folder whose every JSON file parses (older versions wrote them in place)."""
    files = list(d.glob("*.json"))
    for f in files:
        try:
            json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return False
    return bool(files)


def clean_backups(root: Path) -> list[Path]:
    """Remove crash leftovers under ``root/.backup``: temp folders and half-written backups."""
    root = Path(root) / BACKUP_DIR
    if not root.is_dir():
        return []
    gone = [
        d for d in sorted(root.iterdir()) if d.is_dir() and (d.name.startswith(TMP_PREFIX) or not _complete_backup(d))
    ]
    for d in gone:
        shutil.rmtree(d, ignore_errors=True)
    return gone


def save(ledger: Ledger, path: Path) -> None:
    write_json(path, to_json(ledger))


# ---------------------------------------------------------------------------- matching


@dataclass(frozen=True)
class Proposal:
    """One faceset of a source's export, on its way into the ledger."""

    source: str
    name: str  # the entry name in the source's export (faceset_003, a folder label, ...)
    kind: str  # discovered | identities | routed
    model_id: str
    centroid: np.ndarray
    crops: Sequence[Mapping[str, Any]]  # export manifest crops: face_key, sha256, source_path, score, file
    label: str | None = None
    route_to: str | None = None  # "ledger:<name>" or "<source>/<entry name>"
    parent: str | None = None  # era proposals: the identity that was split
    thin: bool = False  # era proposals: fewer faces than min_era_faces


def _overlap_owner(crops: Sequence[Mapping[str, Any]], owner: Mapping[str, int]) -> int | None:
    """The identity that already holds at least half of these faces, if any."""
    counts: dict[int, int] = {}
    for c in crops:
        n = owner.get(c["face_key"])
        if n is not None:
            counts[n] = counts.get(n, 0) + 1
    if not counts:
        return None
    best = min(counts, key=lambda n: (-counts[n], n))
    return best if 2 * counts[best] >= len(crops) else None


def match(
    ledger: Ledger,
    p: Proposal,
    match_threshold: float,
    resolved: Mapping[str, int],
    owner: Mapping[str, int] | None = None,
) -> int | None:
    """The number of the existing identity this proposal belongs to, or None for a new one.

    Order of evidence: an explicit route (mixed sources), the hand-sorted label (see
    ``label_target``), the faces it already shares with an identity, then the nearest
    centroid within ``match_threshold``. Eras are matched to eras of the same parent by era
    name, then by shared faces, never by centroid (eras of one person are close by nature).
    """
    owner = ledger.owner() if owner is None else owner
    if p.route_to:
        if p.route_to.startswith("ledger:"):
            ident = ledger.by_name(p.route_to.removeprefix("ledger:"))
            if ident is not None and ident.kind != "era":
                return ident.number
        elif p.route_to in resolved:
            return resolved[p.route_to]
    if p.kind == "era":
        eras = [i for i in ledger.identities if i.kind == "era" and i.parent == p.parent]
        named = [i for i in eras if i.name == p.name or p.name in i.aliases]
        if named:
            return named[0].number
        others = {k: i.number for i in eras for k in i.members}
        return _overlap_owner(p.crops, others)
    if p.kind == "identities":
        return label_target(ledger, p, match_threshold, owner)[0]
    hit = _overlap_owner(p.crops, owner)
    if hit is not None:
        return hit
    return _nearest([i for i in ledger.identities if i.kind != "era"], p, match_threshold)


def label_target(
    ledger: Ledger, p: Proposal, match_threshold: float, owner: Mapping[str, int]
) -> tuple[int | None, list[dict]]:
    """Which identity a hand-sorted folder names, and what the merge must report about it.

    The folder's label names, in order: the identity that already carries it; the identity
    that holds at least half of its faces; the nearest identity within ``match_threshold``.
    So the order of sources never decides who is who: a person discovered first is named
    by the folder later (its number stays), a folder merged first absorbs the discovered set.
    An identity already named by another label is never renamed: that conflict is returned
    as a note and the folder gets an identity of its own.
    """
    notes: list[dict] = []
    named = ledger.by_label(p.label) if p.label is not None else None
    if named is not None:
        return named.number, notes
    hit = _overlap_owner(p.crops, owner)
    if hit is None:
        hit = _nearest([i for i in ledger.identities if i.kind != "era"], p, match_threshold)
    if hit is not None:
        other = ledger.by_number(hit)
        if other.label is not None and other.label != p.label:
            notes.append(
                {
                    "kind": "label_conflict",
                    "source": p.source,
                    "label": p.label,
                    "identity": hit,
                    "message": f"labels {other.label!r} and {p.label!r} ({p.source}) claim one identity "
                    f"#{hit} {other.name}: not merged; {p.label!r} kept apart, check both folders",
                }
            )
            hit = None
    return hit, notes


def label_split(ledger: Ledger, p: Proposal, number: int, owner: Mapping[str, int]) -> dict | None:
    """A note when faces of the hand-sorted folder ``p`` sit in identities other than ``number``."""
    counts: dict[int, int] = {}
    for c in p.crops:
        n = owner.get(c["face_key"])
        if n is not None and n != number:
            counts[n] = counts.get(n, 0) + 1
    if not counts:
        return None
    where = ", ".join(f"#{n} {ledger.by_number(n).name} ({k} faces)" for n, k in sorted(counts.items()))
    return {
        "kind": "label_split",
        "source": p.source,
        "label": p.label,
        "identity": number,
        "also_in": {str(n): k for n, k in sorted(counts.items())},
        "message": f"label {p.label!r} ({p.source}) names #{number} {ledger.by_number(number).name}, "
        f"but some of its faces sit in {where}: not moved, check those identities",
    }


def name_identity(ledger: Ledger, ident: Identity, name: str, label: str | None = None) -> bool:
    """Give ``ident`` a new name (the old one becomes an alias; its number stays). True if changed.

    ``label``: the hand-sorted folder that named it (the identity becomes kind ``identities``).
    A curation rename decision calls this without a label.
    """
    changed = False
    if label is not None and ident.label != label:
        ident.label, changed = label, True
        if ident.kind != "era":
            ident.kind = "identities"
    if name != ident.name:
        others = Ledger([i for i in ledger.identities if i is not ident])
        new = unique_name(others, name)
        if new != ident.name:
            if ident.name not in ident.aliases:
                ident.aliases.append(ident.name)
            ident.name, changed = new, True
    return changed


def members_by_key(ledger: Ledger, source: str) -> dict[str, list[Member]]:
    """face key -> every member of ``source`` with that key (an era copies its parent's members)."""
    out: dict[str, list[Member]] = {}
    for ident in ledger.identities:
        for key, m in ident.members.items():
            if m.source == source:
                out.setdefault(key, []).append(m)
    return out


def relocate(
    ledger: Ledger,
    source: str,
    crops: Sequence[Mapping[str, Any]],
    index: Mapping[str, Sequence[Member]] | None = None,
) -> int:
    """Record where the photos of ``source``'s members are now (a moved source root). Returns how many moved.

    ``index``: ``members_by_key(ledger, source)``, built once when many proposals of one source
    are relocated (then each costs its own crops, not the whole ledger)."""
    index = members_by_key(ledger, source) if index is None else index
    moved = 0
    for c in crops:
        new = c.get("source_path")
        for m in index.get(c["face_key"], ()) if new else ():
            if m.path != new:
                m.path, moved = new, moved + 1
    return moved


def _nearest(candidates: Sequence[Identity], p: Proposal, match_threshold: float) -> int | None:
    best, best_d = None, match_threshold
    for ident in candidates:
        c = ident.centroid(p.model_id)
        if c is None:
            continue
        d = float(1.0 - c @ p.centroid)
        if d <= best_d and (best is None or d < best_d or ident.number < best):
            best, best_d = ident.number, d
    return best


@dataclass
class MergeChange:
    number: int
    name: str
    created: bool
    added: list[str]  # face keys


def unique_name(ledger: Ledger, wanted: str) -> str:
    """``wanted``, or ``wanted_2``, ``wanted_3``... when another identity has that name."""
    names = {i.name for i in ledger.identities}
    if wanted not in names:
        return wanted
    k = 2
    while f"{wanted}_{k}" in names:
        k += 1
    return f"{wanted}_{k}"


def apply(
    ledger: Ledger,
    p: Proposal,
    number: int | None,
    embeddings: Mapping[str, np.ndarray],
    owner: dict[str, int] | None = None,
) -> MergeChange | None:
    """Add the proposal's new faces to identity ``number`` (or to a new identity).

    ``owner`` (``ledger.owner()``, kept up to date here) saves rebuilding it per proposal.
    Faces that already belong to any identity stay where they are (members never move); a
    face whose photo already has another face in the identity is skipped (cannot-link). A new
    identity is only created when at least one face is left for it; returns None otherwise.
    """
    owner = owner_for(ledger, p, ledger.owner() if owner is None else owner)
    ident = ledger.by_number(number) if number is not None else None
    fresh = fresh_crops(ledger, p, number, owner)
    if ident is not None and p.kind == "identities" and p.label is not None and ident.label is None:
        name_identity(ledger, ident, p.label, p.label)  # the folder names the person's identity
    if ident is None:
        if not fresh:
            return None
        n = ledger.next_number()
        wanted = {"identities": p.label, "era": p.name}.get(p.kind) or discovered_name(n)
        ident = Identity(
            number=n,
            name=unique_name(ledger, wanted),
            kind=p.kind if p.kind in ("identities", "era") else "discovered",
            label=p.label if p.kind == "identities" else None,
            parent=p.parent if p.kind == "era" else None,
            thin=p.thin if p.kind == "era" else False,
        )
        ledger.identities.append(ident)
    for c in fresh:
        key = c["face_key"]
        owner[key] = ident.number
        ident.members[key] = Member(
            source=p.source,
            sha256=c["sha256"],
            path=c.get("source_path", ""),
            score=float(c["score"]),
            crop=c["file"],
            phash=c.get("phash"),
        )
        emb = embeddings.get(key)
        if emb is not None:
            prev = ident.centroid_sum.get(p.model_id)
            s = (np.asarray(prev, np.float64) if prev is not None else 0.0) + np.asarray(emb, np.float64)
            ident.centroid_sum[p.model_id] = [round(float(v), 7) for v in s]
            ident.centroid_count[p.model_id] = ident.centroid_count.get(p.model_id, 0) + 1
    if p.kind == "era" and ident.thin != p.thin:
        ident.thin = p.thin  # an era that grew past min_era_faces leaves _thin/
    if fresh and p.source not in ident.sources:
        ident.sources.append(p.source)
    return MergeChange(ident.number, ident.name, number is None, [c["face_key"] for c in fresh])


def owner_for(ledger: Ledger, p: Proposal, owner: dict[str, int]) -> dict[str, int]:
    """The face owners that matter for ``p``: an era shares its faces with its parent, not with its sibling eras."""
    if p.kind != "era":
        return owner
    return {k: i.number for i in ledger.identities if i.kind == "era" and i.parent == p.parent for k in i.members}


def fresh_crops(ledger: Ledger, p: Proposal, number: int | None, owner: Mapping[str, int]) -> list[Mapping[str, Any]]:
    """The proposal's crops that would join identity ``number``: not owned yet, one per photo."""
    photos = ledger.by_number(number).photos() if number is not None else set()
    fresh = []
    for c in sorted(p.crops, key=lambda c: c["face_key"]):
        if c["face_key"] in owner or c["sha256"] in photos:
            continue
        photos.add(c["sha256"])
        fresh.append(c)
    return fresh


def discovered_name(number: int) -> str:
    return f"faceset_{number:03d}"
