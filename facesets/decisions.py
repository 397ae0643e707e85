"""Curation decisions: what a person decided about the library, kept in a versionable YAML file.

``config/decisions.yaml`` (config key ``decisions``; format: config/schemas/decisions.schema.yaml)
lists decisions in order: name an identity, merge one into another, split faces off into a new
identity, reject faces ("not this person"), accept faces (candidates) into an identity, hide an
identity, never export a face. ``manifest-merge`` applies them on every run as a *pure function*
of the ledger it keeps without decisions (``apply``): the ledger's identities and members stay
exactly what the workflow found, the library folders and ``manifest.json`` show the decided
view. So a rerun changes nothing (idempotent) and removing a decision from the file undoes it
at the next merge.

Numbers: a merged identity's number is retired (the manifest says where it went) and, like every
number the ledger ever gave, never reused; a split's new identity gets a number reserved in the
ledger (``curation.reserved``) so the same split always gets the same number back.

Every face crop the library has seen (members and candidates) is kept by face key in
``facesets_swap_ready/.faces/<face key>.png`` (hard links where the file system allows), so any
decided view, and any undo, can be built without the exports.

A decision that refers to an identity or face the library never had stops the merge with
``<file>:<line>: ...`` (line numbers from the YAML node marks). A face the library knows that is
no longer where a decision expects it is skipped and said so in the applied record.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from facesets import ledger as L
from facesets.atomic import write_text
from facesets.config import load_schema

ACTIONS = ("name", "merge", "split", "reject", "accept", "hide", "no_export")
FACES_DIR = ".faces"  # every crop the library has seen, by face key
FACE_KEY = re.compile(r"^[0-9a-f]{64}_[0-9]+$")
FILE_VERSION = 1
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: marks and all


class DecisionError(ValueError):
    """A decision file that cannot be read or applied; the message names the file and line."""


# ---------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Decision:
    action: str
    line: int  # 1-based line of the decision in the file
    where: str  # "<file>:<line>"
    identity: int | str | None = None
    other: int | str | None = None  # merge: the identity folded into ``identity``
    faces: tuple[str, ...] = ()
    name: str | None = None
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The decision as it is written in the file (without line or note)."""
        d: dict[str, Any] = {"action": self.action}
        if self.identity is not None:
            d["identity"] = self.identity
        if self.other is not None:
            d["from"] = self.other
        if self.faces:
            d["faces"] = list(self.faces)
        if self.name is not None:
            d["name"] = self.name
        return d


def _line_of(node: yaml.Node | None, path: Sequence[Any]) -> int:
    """1-based line of the YAML node at ``path`` (keys / indices), or of its deepest ancestor."""
    line = node.start_mark.line + 1 if node is not None else 1
    for step in path:
        nxt = None
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if getattr(k, "value", None) == step), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
            nxt = node.value[step]
        if nxt is None:
            break
        node, line = nxt, nxt.start_mark.line + 1
    return line


def _schema() -> dict[str, Any]:
    return load_schema("decisions")


def _describe(err: jsonschema.ValidationError) -> str:
    inst = err.instance
    if err.validator == "additionalProperties" and isinstance(inst, dict):
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(inst) - set(allowed))
        what = f" for action {inst.get('action')!r}" if "action" in inst else ""
        return f"unknown key {', '.join(map(repr, extra))}{what}; allowed: {', '.join(allowed)}"
    if err.validator == "enum":
        return f"{inst!r} is not one of {', '.join(map(str, err.validator_value))}"
    if err.validator == "pattern" and isinstance(inst, str) and FACE_KEY.pattern == err.validator_value:
        return f"{inst!r} is not a face key (<photo sha256>_<face index>)"
    if err.validator == "pattern":
        return (
            f"{inst!r} is not a folder-safe name (letters, digits, _ - .; not starting with _ or .; "
            "not faceset_<number>)"
        )
    return err.message


def parse(text: str, where: str) -> list[Decision]:
    """The decisions in ``text`` (the content of file ``where``), validated; raises DecisionError."""
    try:
        node = yaml.compose(text, Loader=LOADER)
        data = yaml.load(text, Loader=LOADER)  # a safe loader (CSafeLoader or SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise DecisionError(f"{where}{line}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if data is None:
        return []
    if not isinstance(data, dict):
        raise DecisionError(f"{where}:1: expected a mapping with `version: 1` and a `decisions:` list")
    errors = sorted(
        jsonschema.Draft202012Validator(_schema()).iter_errors(data), key=lambda e: (len(e.absolute_path), e.path)
    )
    if errors:
        deepest = max(errors, key=lambda e: len(e.absolute_path))  # the most specific message
        best = jsonschema.exceptions.best_match([deepest, *errors]) or deepest
        path = list(best.absolute_path)
        key = ".".join(map(str, path)) or "(top level)"
        raise DecisionError(f"{where}:{_line_of(node, path)}: {key}: {_describe(best)}")
    out = []
    for i, raw in enumerate(data.get("decisions") or []):
        line = _line_of(node, ["decisions", i])
        out.append(
            Decision(
                action=raw["action"],
                line=line,
                where=f"{where}:{line}",
                identity=raw.get("identity"),
                other=raw.get("from"),
                faces=tuple(raw.get("faces") or ()),
                name=raw.get("name"),
                note=raw.get("note"),
            )
        )
    return out


def load(path: Path | str | None) -> list[Decision]:
    """The decisions of the file at ``path``; none when it does not exist."""
    if path is None:
        return []
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise DecisionError(f"{path}: cannot read the decisions file: {exc}") from None
    return parse(text, str(path))


def digest(path: Path | str | None) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None
    except FileNotFoundError:
        return None


# ---------------------------------------------------------------------------- applying


@dataclass
class View:
    """The library as decided: the ledger's identities with the decisions applied (in file order)."""

    identities: dict[int, L.Identity]  # live identities (hidden ones included), by number
    hidden: set[int] = field(default_factory=set)
    retired: dict[int, int] = field(default_factory=dict)  # number -> number it was merged into
    retired_names: dict[int, str] = field(default_factory=dict)
    rejected: dict[int, set[str]] = field(default_factory=dict)  # number -> faces that are not its person
    never_export: set[str] = field(default_factory=set)
    candidates: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # number -> offered faces
    reserved: dict[str, int] = field(default_factory=dict)  # split key -> its number
    applied: list[dict[str, Any]] = field(default_factory=list)  # what each decision did

    def library(self) -> list[L.Identity]:
        """The identities to build into the library (not hidden), members copied (builders repoint crops)."""
        out = []
        for n in sorted(self.identities):
            if n in self.hidden:
                continue
            ident = self.identities[n]
            out.append(replace(ident, members={k: replace(m) for k, m in ident.members.items()}))
        return out

    def resolve(self, ref: int) -> int | None:
        """Where an identity number lives now (following merges), or None when it does not exist."""
        seen = set()
        while ref in self.retired and ref not in seen:
            seen.add(ref)
            ref = self.retired[ref]
        return ref if ref in self.identities else None


def _copy(ident: L.Identity) -> L.Identity:
    return replace(
        ident,
        sources=list(ident.sources),
        members=dict(ident.members),
        centroid_sum=dict(ident.centroid_sum),
        centroid_count=dict(ident.centroid_count),
    )


def split_key(number: int, faces: Sequence[str]) -> str:
    return f"split:{number}:" + hashlib.sha256(",".join(sorted(faces)).encode()).hexdigest()[:16]


def known_faces(ledger: L.Ledger) -> dict[str, L.Member]:
    """Every face the library has seen: members of any identity, and candidates ever offered."""
    out: dict[str, L.Member] = {}
    for raw_key, raw in ledger.curation.get("faces", {}).items():
        out[raw_key] = L.Member(**raw)
    for ident in ledger.identities:
        out.update(ident.members)
    return out


class _Applier:
    def __init__(self, ledger: L.Ledger):
        self.v = View(identities={i.number: _copy(i) for i in ledger.identities})
        self.v.reserved = dict(ledger.curation.get("reserved", {}))
        self.known = known_faces(ledger)
        self.all_numbers = {i.number for i in ledger.identities} | set(self.v.reserved.values())
        self.named: set[int] = set()  # identities a decision named

    # -- lookups
    def ident(self, ref: int | str | None, d: Decision, what: str = "identity") -> L.Identity:
        v = self.v
        if isinstance(ref, int):
            if ref in v.identities:
                return v.identities[ref]
            if ref in v.retired:
                raise DecisionError(f"{d.where}: {what} {ref} was merged into {v.resolve(ref)} earlier in the file")
            raise DecisionError(f"{d.where}: {what} {ref}: the library has no identity with that number")
        hit = sorted(
            (i for i in v.identities.values() if i.name == ref), key=lambda i: (i.number not in self.named, i.number)
        )
        if hit:  # a name a decision gave wins over the same name the workflow gave later
            return hit[0]
        gone = [n for n, name in v.retired_names.items() if name == ref]
        if gone:
            raise DecisionError(f"{d.where}: {what} {ref!r} was merged into {v.resolve(gone[0])} earlier in the file")
        raise DecisionError(f"{d.where}: {what} {ref!r}: the library has no identity with that name")

    def check_faces(self, d: Decision) -> None:
        unknown = [k for k in d.faces if k not in self.known]
        if unknown:
            more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
            raise DecisionError(f"{d.where}: face {unknown[0]} is not a face of this library{more}")

    def check_name(self, name: str, d: Decision, own: int | None) -> None:
        clash = [i.number for i in self.v.identities.values() if i.name == name and i.number != own]
        if clash and clash[0] in self.named:
            raise DecisionError(f"{d.where}: name {name!r} is already given to identity {clash[0]}")

    def holder(self, key: str, exclude: int) -> L.Identity | None:
        for i in self.v.identities.values():
            if i.number != exclude and i.kind != "era" and key in i.members:
                return i
        return None

    # -- actions
    def run(self, d: Decision) -> dict[str, Any]:
        rec: dict[str, Any] = {**d.as_dict(), "line": d.line}
        getattr(self, f"do_{d.action}")(d, rec)
        return rec

    def do_name(self, d: Decision, rec: dict[str, Any]) -> None:
        ident = self.ident(d.identity, d)
        assert d.name is not None
        self.check_name(d.name, d, ident.number)
        rec["effect"] = f"#{ident.number} {ident.name} -> {d.name}"
        ident.name = d.name
        self.named.add(ident.number)

    def do_merge(self, d: Decision, rec: dict[str, Any]) -> None:
        into = self.ident(d.identity, d)
        other = self.ident(d.other, d, "from identity")
        if into.number == other.number:
            raise DecisionError(f"{d.where}: cannot merge identity {into.number} into itself")
        rejected = self.v.rejected.setdefault(into.number, set())
        rejected |= self.v.rejected.pop(other.number, set())
        photos = into.photos()
        moved, dropped = 0, []
        for k, m in sorted(other.members.items()):
            if k in into.members or k in rejected:
                continue
            if m.sha256 in photos:  # one face per photo and identity: the one it had stays
                dropped.append(k)
                continue
            into.members[k] = m
            photos.add(m.sha256)
            moved += 1
        into.sources += [s for s in other.sources if s not in into.sources]
        del self.v.identities[other.number]
        self.v.retired[other.number] = into.number
        self.v.retired_names[other.number] = other.name
        self.v.hidden.discard(other.number)
        rec["effect"] = f"#{other.number} {other.name} -> #{into.number} {into.name}: {moved} faces"
        if dropped:
            rec["skipped"] = {k: "its photo already has a face in the identity" for k in dropped}

    def do_split(self, d: Decision, rec: dict[str, Any]) -> None:
        src = self.ident(d.identity, d)
        self.check_faces(d)
        key = split_key(src.number, d.faces)
        if key not in self.v.reserved:
            n = max(self.all_numbers, default=0) + 1
            self.v.reserved[key] = n
        n = self.v.reserved[key]
        self.all_numbers.add(n)
        name = d.name or L.discovered_name(n)
        if d.name is not None:
            self.check_name(d.name, d, None)
        new = L.Identity(number=n, name=name, kind="discovered")
        skipped = {}
        for k in d.faces:
            if k not in src.members:
                skipped[k] = f"not in identity {src.number} (any more)"
                continue
            new.members[k] = src.members.pop(k)
        new.sources = [s for s in src.sources if any(m.source == s for m in new.members.values())]
        new.sources += sorted({m.source for m in new.members.values()} - set(new.sources))
        self.v.identities[n] = new
        if d.name is not None:
            self.named.add(n)
        rec["number"] = n
        rec["effect"] = f"#{src.number} {src.name} -> new #{n} {name}: {len(new.members)} faces"
        if skipped:
            rec["skipped"] = skipped

    def do_reject(self, d: Decision, rec: dict[str, Any]) -> None:
        ident = self.ident(d.identity, d)
        self.check_faces(d)
        removed = [k for k in d.faces if ident.members.pop(k, None) is not None]
        self.v.rejected.setdefault(ident.number, set()).update(d.faces)
        rec["effect"] = (
            f"#{ident.number} {ident.name}: {len(removed)} faces removed, {len(d.faces)} never offered again"
        )

    def do_accept(self, d: Decision, rec: dict[str, Any]) -> None:
        ident = self.ident(d.identity, d)
        self.check_faces(d)
        photos = ident.photos()
        added, skipped = 0, {}
        for k in d.faces:
            self.v.rejected.get(ident.number, set()).discard(k)
            if k in ident.members:
                continue
            m = self.known[k]
            if m.sha256 in photos:
                skipped[k] = "its photo already has a face in the identity"
                continue
            holder = self.holder(k, ident.number)
            if holder is not None:
                m = holder.members.pop(k)
            ident.members[k] = m
            photos.add(m.sha256)
            added += 1
            if m.source and m.source not in ident.sources:
                ident.sources.append(m.source)
        rec["effect"] = f"#{ident.number} {ident.name}: +{added} faces"
        if skipped:
            rec["skipped"] = skipped

    def do_hide(self, d: Decision, rec: dict[str, Any]) -> None:
        ident = self.ident(d.identity, d)
        self.v.hidden.add(ident.number)
        rec["effect"] = f"#{ident.number} {ident.name} hidden"

    def do_no_export(self, d: Decision, rec: dict[str, Any]) -> None:
        self.check_faces(d)
        self.v.never_export.update(d.faces)
        rec["effect"] = f"{len(d.faces)} faces never exported"

    # -- the end state
    def finish(self, ledger: L.Ledger) -> View:
        v = self.v
        for ident in v.identities.values():
            for k in list(ident.members):
                if k in v.never_export or k in v.rejected.get(ident.number, ()):
                    del ident.members[k]
        _dedupe_names(v, self.named)
        held = {k for i in v.identities.values() for k in i.members}
        for key, c in sorted(ledger.curation.get("candidates", {}).items()):
            n = v.resolve(int(c["identity"]))
            if n is None or key in held or key in v.never_export or key in v.rejected.get(n, ()):
                continue
            if key in self.known and self.known[key].sha256 in v.identities[n].photos():
                continue  # another face of a photo the identity has: one face per photo, never offered
            v.candidates.setdefault(n, []).append({"face_key": key, **c, "identity": n})
        for lst in v.candidates.values():
            lst.sort(key=lambda c: (-float(c.get("score", 0)), c["face_key"]))
        return v


def _dedupe_names(v: View, named: set[int]) -> None:
    """A name given by a decision wins; an identity the workflow later gave that name gets a suffix."""
    taken = {v.identities[n].name for n in named if n in v.identities}
    used = set(taken)
    for n in sorted(v.identities):
        ident = v.identities[n]
        if n in named:
            continue
        if ident.name in used:
            k = 2
            while f"{ident.name}_{k}" in used:
                k += 1
            ident.name = f"{ident.name}_{k}"
        used.add(ident.name)


def apply(ledger: L.Ledger, decisions: Sequence[Decision]) -> View:
    """The decided view of ``ledger`` (which is not changed): ``decisions`` applied in order."""
    a = _Applier(ledger)
    for d in decisions:
        a.v.applied.append(a.run(d))
    return a.finish(ledger)


# ---------------------------------------------------------------------------- the merge's side


def _link_or_copy(src: Path, dest: Path, link: bool = True) -> None:
    """``dest`` becomes ``src``'s content (temp + rename): a hard link when ``link`` and possible."""
    tmp = dest.with_name(f".tmp-{dest.name}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        if not link:
            raise OSError("copy asked for")
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def _keep_crop(swap_ready: Path, key: str, src: Path) -> str:
    """``.faces/<key>.png`` (made from ``src`` when missing); returns its path relative to the library.

    Files of the library itself are linked (the library only ever replaces files, never rewrites
    them); files from elsewhere (an export) are copied, as their owner may rewrite them in place.
    """
    dest = swap_ready / FACES_DIR / f"{key}.png"
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        inside = Path(os.path.abspath(src)).is_relative_to(Path(os.path.abspath(swap_ready)))
        _link_or_copy(src, dest, link=inside)
    return dest.relative_to(swap_ready).as_posix()


def collect_candidates(
    ledger: L.Ledger, exports: Sequence[tuple[str, Path, Mapping[str, Any]]], swap_ready: Path
) -> None:
    """Record the exports' candidates against the library identity their set joined (ledger.curation).

    ``exports``: (source, export folder, export manifest). Crops are kept under ``.faces/``.
    """
    faces = dict(ledger.curation.get("faces", {}))
    current: dict[str, dict[str, Any]] = {}
    for source, export_dir, manifest in exports:
        entries = ledger.batches.get(source, {}).get("entries", {})
        for c in manifest.get("candidates", []) or []:
            number = entries.get(c.get("nearest"))
            key = c.get("face_key", "")
            src = Path(export_dir) / c.get("file", "")
            if number is None or not FACE_KEY.match(key) or not (src.exists() or key in faces):
                continue
            if key not in faces:
                crop = _keep_crop(swap_ready, key, src)
                faces[key] = {
                    "source": source,
                    "sha256": c.get("sha256", ""),
                    "path": c.get("source_path", ""),
                    "score": float(c.get("score", 0.0)),
                    "crop": crop,
                }
            current[key] = {"identity": int(number), "distance": c.get("distance"), "score": c.get("score")}
    ledger.curation["faces"] = faces
    ledger.curation["candidates"] = current


def keep_member_crops(ledger: L.Ledger, swap_ready: Path) -> None:
    """Every member's crop under ``.faces/`` and the member pointing at it (not at an export or a folder)."""
    for ident in ledger.identities:
        for key, m in ident.members.items():
            src = Path(m.crop) if os.path.isabs(m.crop) else swap_ready / m.crop
            m.crop = _keep_crop(swap_ready, key, src)


def curate(
    ledger: L.Ledger,
    exports: Sequence[tuple[str, Path, Mapping[str, Any]]],
    swap_ready: Path,
    decisions_path: Path | None,
) -> View:
    """manifest-merge's hook: candidates and crops kept, the decisions applied, the record in the ledger.

    Raises DecisionError (naming the file and line) before anything of the library is changed.
    """
    decisions = load(decisions_path)
    swap_ready = Path(swap_ready)
    collect_candidates(ledger, exports, swap_ready)
    keep_member_crops(ledger, swap_ready)
    view = apply(ledger, decisions)
    ledger.curation["reserved"] = view.reserved
    found = {i.number: i.name for i in ledger.identities}
    # decided names, for readers of the ledger that look identities up by name (eras.identities)
    ledger.curation["names"] = {str(n): i.name for n, i in view.identities.items() if found.get(n, i.name) != i.name}
    ledger.curation["decisions"] = {
        "file": str(decisions_path) if decisions_path else None,
        "sha256": digest(decisions_path),
        "applied": view.applied,
    }
    return view


def manifest_extra(view: View, ledger: L.Ledger, top_n: int) -> dict[str, Any]:
    """The manifest's curation keys (only those that have something to say)."""
    out: dict[str, Any] = {}
    if view.retired:
        out["retired"] = [
            {"number": n, "name": view.retired_names.get(n), "merged_into": view.resolve(n)}
            for n in sorted(view.retired)
        ]
    if view.hidden:
        out["hidden"] = [
            {"number": n, "name": view.identities[n].name, "faces": len(view.identities[n].members)}
            for n in sorted(view.hidden)
        ]
    cands = [c for n in sorted(view.candidates) if n not in view.hidden for c in view.candidates[n]]
    if cands:
        out["candidates"] = [{**c, "crop": f"{FACES_DIR}/{c['face_key']}.png"} for c in cands]
    if view.applied:
        out["decisions"] = len(view.applied)
    return out


def prune(swap_ready: Path, built: Sequence[L.Identity], folder_of: Callable[[L.Identity], str]) -> list[str]:
    """Remove what the decided view no longer has: identity folders (renamed, merged, hidden) and
    crops of faces that left an identity; link the rest to ``.faces/``. Returns removed folders."""
    swap_ready = Path(swap_ready)
    keep = {folder_of(i) for i in built}
    removed = []
    for man in sorted(list(swap_ready.glob("*/manifest.json")) + list(swap_ready.glob("_thin/*/manifest.json"))):
        d = man.parent
        rel = d.relative_to(swap_ready).as_posix()
        if rel in keep or rel.startswith("."):
            continue
        try:
            is_identity = "number" in json.loads(man.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            is_identity = False
        if is_identity:
            shutil.rmtree(d)
            removed.append(rel)
    for ident in built:
        d = swap_ready / folder_of(ident)
        for png in (d / "crops").glob("*.png"):
            key = png.stem
            if key not in ident.members:
                png.unlink()
                continue
            kept = swap_ready / FACES_DIR / png.name
            if kept.exists() and not os.path.samefile(kept, png):
                with contextlib.suppress(OSError):  # no hard links here: two copies it is
                    _link_or_copy(kept, png)
    return removed


# ---------------------------------------------------------------------------- editing the file


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock for editing the decisions file (on its folder, so renames keep it)."""
    folder = Path(path).parent
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


HEADER = (
    "# Curation decisions, applied by manifest-merge in this order (format: config/schemas/decisions.schema.yaml).\n"
    "# Written by `facesets review`; edit by hand as you like. Removing a decision undoes it at the next run.\n"
)


def _item_text(entry: Mapping[str, Any]) -> str:
    return "  - " + yaml.safe_dump(dict(entry), default_flow_style=True, sort_keys=False, width=10**9).strip() + "\n"


def _render(entries: Sequence[Mapping[str, Any]]) -> str:
    return HEADER + "version: 1\ndecisions:\n" + "".join(_item_text(e) for e in entries)


def _raw_entries(text: str) -> list[dict[str, Any]]:
    data = yaml.safe_load(text) if text.strip() else None
    return list((data or {}).get("decisions") or [])


def _appended(text: str, entry: Mapping[str, Any]) -> str:
    """``text`` with ``entry`` added at the end, comments kept where the layout allows it."""
    entries = _raw_entries(text)
    if not text.strip():
        return _render([entry])
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    seq = (
        next((v for k, v in node.value if k.value == "decisions"), None) if isinstance(node, yaml.MappingNode) else None
    )
    last_key = node.value[-1][0].value if isinstance(node, yaml.MappingNode) and node.value else None
    if isinstance(seq, yaml.SequenceNode) and not seq.flow_style and seq.value and last_key == "decisions":
        out = text if text.endswith("\n") else text + "\n"
        indent = " " * seq.value[0].start_mark.column
        candidate = out + indent[:-2] + _item_text(entry).lstrip()
        if _raw_entries(candidate) == [*entries, dict(entry)]:
            return candidate
    return _render([*entries, dict(entry)])


def _removed(text: str, index: int) -> str:
    entries = _raw_entries(text)
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    seq = next((v for k, v in node.value if k.value == "decisions"), None)
    want = entries[:index] + entries[index + 1 :]
    if isinstance(seq, yaml.SequenceNode) and not seq.flow_style:
        lines = text.splitlines(keepends=True)
        start = seq.value[index].start_mark.line
        end = seq.value[index + 1].start_mark.line if index + 1 < len(seq.value) else seq.value[index].end_mark.line
        if index + 1 >= len(seq.value) and seq.value[index].end_mark.column > 0:
            end += 1
        candidate = "".join(lines[:start] + lines[end:])
        if _raw_entries(candidate) == want:
            return candidate
    return _render(want)


def edit(
    path: Path, change: Callable[[list[Decision], str], str], check: Callable[[list[Decision]], None]
) -> list[Decision]:
    """Change the decisions file under the lock: ``change(current, text) -> new text``; the new file
    is parsed and ``check``ed (raises to refuse) before it replaces the old one (temp + rename)."""
    path = Path(path)
    with locked(path):
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        current = parse(text, str(path))
        new_text = change(current, text)
        new = parse(new_text, str(path))
        check(new)
        write_text(path, new_text)
        return new


def append(path: Path, entry: Mapping[str, Any], check: Callable[[list[Decision]], None]) -> list[Decision]:
    """Add one decision at the end of the file (atomically, under the lock)."""
    return edit(path, lambda _cur, text: _appended(text, entry), check)


def remove(
    path: Path, index: int, expected: Mapping[str, Any], check: Callable[[list[Decision]], None]
) -> list[Decision]:
    """Remove decision ``index`` if it still is ``expected`` (another tab may have changed the file)."""

    def change(cur: list[Decision], text: str) -> str:
        if index >= len(cur) or cur[index].as_dict() != dict(expected):
            raise DecisionError(f"{path}: decision {index + 1} changed meanwhile; reload the page")
        return _removed(text, index)

    return edit(path, change, check)


def pending(ledger: L.Ledger, decisions: Sequence[Decision]) -> dict[str, Any]:
    """What the next merge will change: decisions not applied yet (``new``, with their index in the
    file), applied ones no longer in the file (``undone``), and whether only the order changed."""
    keys = ("action", "identity", "from", "faces", "name")
    applied = [
        {k: v for k, v in r.items() if k in keys} for r in ledger.curation.get("decisions", {}).get("applied", [])
    ]
    now = [d.as_dict() for d in decisions]
    left = [json.dumps(a, sort_keys=True) for a in applied]
    new = []
    for i, d in enumerate(now):
        k = json.dumps(d, sort_keys=True)
        if k in left:
            left.remove(k)
        else:
            new.append({**d, "index": i})
    undone = [json.loads(k) for k in left]
    return {"new": new, "undone": undone, "reordered": not new and not undone and applied != now}
