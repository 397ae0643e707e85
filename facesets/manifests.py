"""The JSON contracts between stages: file names, typed manifests, one builder and one reader each.

Like facesets/schema.py for the Parquet tables, this is the one place where a manifest is
named, built and read (docs/architecture.md, "contracts"):

* the raw-cluster manifest ``<raw>/manifest.json`` (``facesets cluster``, contract 2);
* the refine manifest ``<refine>/refine_manifest.json`` (``refine``, ``identities``, ``route``,
  ``extend --refine-out``: contract 3);
* the export manifest ``<export>/manifest.json`` (``export-swap``, ``era-split --export``:
  contract 4);
* the era manifest ``<eras>/<identity>/eras_manifest.json``;
* the library: ``facesets_swap_ready/manifest.json`` and the identity ledger ``ledger.json``.

The shapes are TypedDicts (plain dicts at run time, so JSON round-trips unchanged). Every
reader checks the version and that the file is the contract it expects, and names the file in
its error (a ValueError: the CLI prints one line, exit 2).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

from facesets.atomic import write_json
from facesets.errors import InputError

VERSION = 1  # every manifest above is at version 1

RAW_MANIFEST = "manifest.json"
REFINE_MANIFEST = "refine_manifest.json"
EXPORT_MANIFEST = "manifest.json"
ERAS_MANIFEST = "eras_manifest.json"
LIBRARY_MANIFEST = "manifest.json"
LEDGER = "ledger.json"
SET_MANIFEST = "manifest.json"  # a face set's own folder: <export>/<set>/, <library>/<identity>/
THIN_MARKER = "THIN.txt"

RESPONSIBLE_USE = (
    "Build face sets only of people who agreed to it. Swapping a real person's face into images or video "
    "without their consent can be unlawful (privacy, image rights, harassment and deepfake laws)."
)


# --------------------------------------------------------------------------- shapes


class Member(TypedDict):
    face_key: str
    path: str
    aliases: list[str]
    sha256: str
    bbox: list[float]


class FacesetEntry(TypedDict, total=False):
    """One proposed face set (contract 3); producers other than refine may add the optional keys."""

    name: str
    faces: int
    unique_images: int
    centroid: list[float]
    members: list[Member]
    kind: str  # discovered | identities | routed | era
    label: str
    route_to: str
    marker: str


class RefineManifest(TypedDict, total=False):
    version: int
    source: str
    kind: str  # absent for `refine`: identities | mixed for the library producers
    model_id: str
    settings: dict[str, Any]
    stats: dict[str, Any]
    facesets: list[FacesetEntry]


class RawClusterManifest(TypedDict, total=False):
    version: int
    model_id: str
    threshold: float
    method: str
    link_mode: str
    link_modes_used: dict[str, int]
    clusters: list[dict[str, Any]]  # {"name", "faces", "photos"}
    faces: list[dict[str, Any]]  # {"face_key", "cluster", "path", ...}
    noface: list[str]
    errors: list[dict[str, str]]
    vanished: list[str]  # photos gone since embed (reported and skipped)


class ExportManifest(TypedDict, total=False):
    version: int
    source: str
    model_id: str
    responsible_use: str
    settings: dict[str, Any]
    stats: dict[str, Any]
    facesets: list[dict[str, Any]]
    candidates: list[dict[str, Any]]
    refine_manifest: str
    identity: str  # era exports
    eras_manifest: str
    immutable_files: bool  # its files are never rewritten in place: the library may hard-link them


class LibraryManifest(TypedDict, total=False):
    version: int
    responsible_use: str
    facesets: list[dict[str, Any]]
    thin_eras: list[dict[str, Any]]


# --------------------------------------------------------------------------- builders


def refine_manifest(
    facesets: Sequence[FacesetEntry],
    stats: Mapping[str, Any],
    *,
    source: str,
    model_id: str,
    kind: str | None = None,
    settings: Mapping[str, Any] | None = None,
) -> RefineManifest:
    """The refine manifest (contract 3), whichever producer proposes the face sets."""
    m: RefineManifest = {
        "version": VERSION,
        "source": source,
        "model_id": model_id,
        "stats": dict(stats),
        "facesets": list(facesets),
    }
    if kind is not None:
        m["kind"] = kind
    if settings is not None:
        m["settings"] = dict(settings)
    return m


def export_manifest(
    source: str, model_id: str, facesets: Sequence[Mapping[str, Any]] = (), **extra: Any
) -> ExportManifest:
    """An export manifest (contract 4) with the responsible-use note; ``extra``: settings, stats, ..."""
    return {  # type: ignore[typeddict-item]
        "version": VERSION,
        "source": source,
        "model_id": model_id,
        "responsible_use": RESPONSIBLE_USE,
        "facesets": list(facesets),
        **extra,
    }


# --------------------------------------------------------------------------- reading and writing


def read_json(path: str | Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path``; InputError naming the file (and ``what`` it should be) otherwise."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: file not found (expected {what})") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, expected {what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read {what}: {exc}") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}: not {what} (a JSON object is expected)")
    return obj


def check_version(obj: Mapping[str, Any], path: str | Path, what: str) -> None:
    v = obj.get("version")
    if v != VERSION:
        raise InputError(f"{path}: {what} of version {v!r}; this facesets reads version {VERSION} (re-run the stage)")


def _file(path: str | Path, name: str) -> Path:
    p = Path(path)
    return p / name if p.is_dir() else p


def is_raw_manifest(obj: Mapping[str, Any]) -> bool:
    return isinstance(obj.get("clusters"), list) and isinstance(obj.get("faces"), list) and "facesets" not in obj


def read_refine_manifest(path: str | Path) -> RefineManifest:
    """A refine manifest (contract 3); ``path`` may be the refine folder. A raw-cluster or any other
    manifest is refused by name (it has no face sets to export)."""
    p = _file(path, REFINE_MANIFEST)
    what = "a refine manifest (refine_manifest.json from `facesets refine`, `identities` or `route`)"
    obj = read_json(p, what)
    if is_raw_manifest(obj):
        raise InputError(
            f"{p}: this is a raw-cluster manifest from `facesets cluster`, not {what}; "
            "pass it as --raw-manifest, and the refine folder's refine_manifest.json as REFINE_MANIFEST"
        )
    if not isinstance(obj.get("facesets"), list) or "responsible_use" in obj:
        raise InputError(f"{p}: not {what} (no 'facesets' list of proposed sets)")
    check_version(obj, p, "refine manifest")
    return obj  # type: ignore[return-value]


def _read_contract(path: str | Path, name: str, label: str, made_by: str, ok, missing: str) -> dict[str, Any]:
    p = _file(path, name)
    what = f"a{'n' if label[0] in 'aeiou' else ''} {label} ({name} from `facesets {made_by}`)"
    obj = read_json(p, what)
    if not ok(obj):
        raise InputError(f"{p}: not {what} ({missing})")
    check_version(obj, p, label)
    return obj


def read_raw_manifest(path: str | Path) -> RawClusterManifest:
    """A raw-cluster manifest (contract 2); ``path`` may be the raw-cluster folder."""
    ok = is_raw_manifest
    return _read_contract(path, RAW_MANIFEST, "raw-cluster manifest", "cluster", ok, "no 'clusters' and 'faces' lists")  # type: ignore[return-value]


def read_export_manifest(path: str | Path) -> ExportManifest:
    """An export manifest (contract 4); ``path`` may be the export folder."""

    def ok(obj: Mapping[str, Any]) -> bool:
        return isinstance(obj.get("facesets"), list) and not is_raw_manifest(obj)

    return _read_contract(path, EXPORT_MANIFEST, "export manifest", "export-swap", ok, "no 'facesets' list")  # type: ignore[return-value]


def read_library_manifest(swap_ready: str | Path) -> LibraryManifest:
    """The library's canonical manifest, ``facesets_swap_ready/manifest.json``."""
    p = _file(swap_ready, LIBRARY_MANIFEST)
    obj = read_json(p, "the library manifest (run the workflow first)")
    check_version(obj, p, "library manifest")
    return obj  # type: ignore[return-value]


def write_manifest(path: str | Path, manifest: Mapping[str, Any]) -> None:
    """Write a manifest atomically; refuses one without the current version (a builder bug)."""
    if manifest.get("version") != VERSION:
        raise ValueError(f"{path}: manifest without version {VERSION}: {sorted(manifest)[:8]}")
    write_json(path, dict(manifest))
