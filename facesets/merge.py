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

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from facesets import ledger as L
from facesets.atomic import write_json, write_text
from facesets.fsz import write_fsz_from_files
from facesets.thresholds import for_model

log = logging.getLogger(__name__)

RESPONSIBLE_USE = (
    "Build face sets only of people who agreed to it. Swapping a real person's face into images or video "
    "without their consent can be unlawful (privacy, image rights, harassment and deepfake laws)."
)
MANIFEST = "manifest.json"
LEDGER = "ledger.json"


@dataclass(frozen=True)
class MergeSettings:
    top_n: int = 30
    backups: int = 20
    match_threshold: float | None = None  # None: the model profile's ``match``


@dataclass(frozen=True)
class ExportBatch:
    source: str
    export_dir: Path
    manifest: Mapping[str, Any]
    digest: str


def read_export(source: str, export_dir: Path) -> ExportBatch:
    path = Path(export_dir) / MANIFEST
    try:
        raw = path.read_bytes()
        manifest = json.loads(raw)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the export manifest of source {source!r}: {exc}") from None
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
    for e in batch.manifest.get("facesets", []):
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
            m["THIN.txt"] = "fewer faces than min_era_faces: kept apart under _thin/\n"
        return m
    return {f"{s}.txt": f"discovered in source {s}\n" for s in ident.sources}


def build_identity(ident: L.Identity, swap_ready: Path, top_n: int) -> bool:
    """Make ``<dir>/`` match the ledger: crops, bundles, markers, manifest. True when it changed.

    New members' ``crop`` points at their export's file; it is copied in and repointed at the
    library's copy (relative to ``swap_ready``), so the ledger never depends on an export again.
    A folder that moved (an era leaving ``_thin/``) is rebuilt from the old folder's copies.
    """
    d = swap_ready / identity_dir(ident)
    ranked = _ranked(ident)
    for key, m in ranked:
        if (d / "crops" / f"{key}.png").exists():
            m.crop = f"{identity_dir(ident)}/crops/{key}.png"
    state = hashlib.sha256(json.dumps([[k, m.score] for k, m in ranked]).encode()).hexdigest()
    man_path = d / MANIFEST
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
        if not dest.exists():  # from the export (absolute path) or the library's old folder (relative)
            tmp = dest.with_name(f".tmp-{dest.name}")
            shutil.copyfile(m.crop if os.path.isabs(m.crop) else swap_ready / m.crop, tmp)
            os.replace(tmp, dest)
        m.crop = dest.relative_to(swap_ready).as_posix()  # from now on the library's own copy
    pngs = [crops / f"{k}.png" for k, _ in ranked]
    write_fsz_from_files(d / f"{ident.name}_top{top_n}.fsz", pngs[:top_n])
    write_fsz_from_files(d / f"{ident.name}_all.fsz", pngs)
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


def canonical_manifest(ledger: L.Ledger, top_n: int) -> dict:
    idents = sorted(ledger.identities, key=lambda i: i.number)
    return {
        "version": 1,
        "responsible_use": RESPONSIBLE_USE,
        "facesets": [_entry(i, top_n) for i in idents if not i.thin],
        "thin_eras": [_entry(i, top_n) for i in idents if i.thin],
    }


def merge_batches(
    ledger: L.Ledger,
    batches: Sequence[ExportBatch],
    face_tables: Sequence[Path],
    settings: MergeSettings,
    parents: Mapping[str, str] | None = None,
) -> list[L.MergeChange]:
    """Apply the batches that changed since the last merge; returns what changed.

    ``parents``: batch source -> identity name, for the era-split batches.
    """
    changes: list[L.MergeChange] = []
    resolved: dict[str, int] = {}
    parents = parents or {}
    changed = [b for b in batches if ledger.batches.get(b.source, {}).get("digest") != b.digest]
    props_of = {b.source: _proposals(b, parents.get(b.source)) for b in changed}
    keys = {c["face_key"] for props in props_of.values() for p in props for c in p.crops}
    emb = load_embeddings(face_tables, keys) if keys else {}  # one read of the face tables
    owner = ledger.owner()
    for b in batches:
        if b.source not in props_of:
            prev = ledger.batches.get(b.source, {})
            resolved.update({f"{b.source}/{n}": v for n, v in prev.get("entries", {}).items()})
            log.info("manifest-merge: %s unchanged since the last merge", b.source)
            continue
        entries: dict[str, int] = {}
        for p in props_of[b.source]:
            thr = settings.match_threshold if settings.match_threshold is not None else for_model(p.model_id).match
            number = L.match(ledger, p, thr, resolved, owner)
            ch = L.apply(ledger, p, number, emb, owner)
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
        ledger.batches[b.source] = {"digest": b.digest, "entries": entries}
    return changes


def run_merge(
    exports: Sequence[tuple[str, Path]],
    face_tables: Sequence[Path],
    swap_ready: Path,
    settings: MergeSettings,
    eras: Sequence[tuple[str, Path]] = (),
) -> dict:
    """``facesets manifest-merge``: update ``swap_ready/`` in place; returns a summary.

    ``eras``: (identity name, era-split export dir) pairs, folded in after the sources.
    """
    swap_ready = Path(swap_ready)
    swap_ready.mkdir(parents=True, exist_ok=True)
    ledger_path, manifest_path = swap_ready / LEDGER, swap_ready / MANIFEST
    ledger = L.load(ledger_path)
    batches = [read_export(s, d) for s, d in exports]
    batches += [read_export(f"eras:{name}", d) for name, d in eras]
    parents = {f"eras:{name}": name for name, _ in eras}
    changes = merge_batches(ledger, batches, face_tables, settings, parents)
    # New members' crops are copied from the exports now (later exports renumber their files).
    rebuilt = [i.name for i in ledger.identities if build_identity(i, swap_ready, settings.top_n)]
    for ident in ledger.identities:  # an era that left (or entered) _thin/: drop its old folder
        if ident.kind == "era":
            stale = swap_ready / (ident.name if ident.thin else f"_thin/{ident.name}")
            if (stale / MANIFEST).exists():
                shutil.rmtree(stale)
    manifest = canonical_manifest(ledger, settings.top_n)
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
    return {
        "identities": len(ledger.identities),
        "changed": [{"number": c.number, "name": c.name, "created": c.created, "added": len(c.added)} for c in changes],
        "rebuilt": rebuilt,
    }
