"""Which ``eras.identities`` names can never be split: checked before anything runs (issue #11).

An era split starts from an identity of the library. Before the first merge the library does not
exist and a name is "pending" (its job says so). Once there is a library, a name must be one of
its identities (or the parent of its eras), a hand-sorted folder of an ``identities`` source
(that folder names an identity at the next merge), or the new name of a ``name`` decision;
anything else would stay pending forever, so the run stops and says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


def library_names(manifest: Mapping[str, Any]) -> set[str]:
    """The identity names of a library manifest, and the parents of its eras."""
    names: set[str] = set()
    for e in manifest.get("facesets", []):
        names.add(str(e.get("name")))
        parent = (e.get("provenance") or {}).get("parent")
        if parent:
            names.add(str(parent))
        if e.get("label"):
            names.add(str(e["label"]))
    return names


def folder_labels(roots: Iterable[Path]) -> set[str]:
    """The names the sub-folders of ``identities`` sources give their identities."""
    from facesets.library import safe_label

    out: set[str] = set()
    for root in roots:
        if root.is_dir():
            out.update(safe_label(d.name) for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    return out


def unknown_era_identities(names: Sequence[str], known: set[str]) -> list[str]:
    return [n for n in names if n not in known]


def check_era_identities(
    names: Sequence[str], swap_ready: Path, identities_roots: Iterable[Path], decided_names: Iterable[str] = ()
) -> str | None:
    """The error message for names that can never be split, or None (no library yet: pending)."""
    from facesets.manifests import LIBRARY_MANIFEST, read_library_manifest

    if not names or not (swap_ready / LIBRARY_MANIFEST).is_file():
        return None
    have = library_names(read_library_manifest(swap_ready))
    unknown = unknown_era_identities(names, have | folder_labels(identities_roots) | set(decided_names))
    if not unknown:
        return None
    listed = ", ".join(sorted(have)[:20]) + (" ..." if len(have) > 20 else "")
    return (
        f"key 'eras.identities': {', '.join(map(repr, unknown))} is not an identity of the library {swap_ready}"
        f" (it has: {listed}), nor a folder of an identities source, nor a name decision, so it could never be"
        " split. Use a name `facesets library` lists."
    )
