"""Identities from the other source kinds: hand-sorted folders and mixed buckets.

Both produce a ``refine_manifest.json`` shaped like refine's (contract: docs/architecture.md),
so ``export`` and ``manifest-merge`` treat every kind alike:

- ``identities``: one sub-folder per person; the identity is asserted. Its centroid comes from
  a two-pass outlier rejection (model ``outlier`` then ``outlier_tight``) started from the
  folder's largest average-linkage cluster, so bystanders in group photos drop out; each photo
  then contributes the one face closest to the centroid.
- ``mixed``: faces within the model's ``match`` distance of a known identity (the ledger's, and
  the identities proposed by sources listed earlier in the config) are routed there, one face
  per photo and identity; a multi-person photo can feed several identities. The rest is
  discovered by refine's own pipeline (cluster, merge, gates, outliers, size).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from facesets import ledger as L
from facesets.clustering import cluster_faces, nearest_identity, normalize
from facesets.manifests import REFINE_MANIFEST, RefineManifest, read_refine_manifest, refine_manifest
from facesets.thresholds import ModelThresholds

log = logging.getLogger(__name__)


def safe_label(label: str) -> str:
    """An ASCII file-name-safe version of a folder label (``Émile Zola`` -> ``Emile_Zola``)."""
    import unicodedata

    s = unicodedata.normalize("NFKD", label).encode("ascii", "ignore").decode()
    s = re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("._")
    return s[:64] or "identity"


def _emb(faces: pd.DataFrame) -> np.ndarray:
    return normalize(np.stack(faces["embedding"].to_numpy()).astype(np.float64)) if len(faces) else np.zeros((0, 1))


def member(row: Any) -> dict:
    return {
        "face_key": row.face_key,
        "path": row.path,
        "sha256": row.sha256,
        "bbox": [round(float(v), 2) for v in (row.x1, row.y1, row.x2, row.y2)],
    }


def entry(name: str, rows: pd.DataFrame, emb: np.ndarray, **extra: Any) -> dict:
    c = normalize(emb.sum(0, keepdims=True))[0]
    rows = rows.sort_values("face_key")
    return {
        "name": name,
        **extra,
        "faces": len(rows),
        "unique_images": int(rows["sha256"].nunique()),
        "centroid": [round(float(v), 6) for v in c],
        "members": [member(r) for r in rows.itertuples(index=False)],
    }


def folder_label(relpath: str) -> str | None:
    parts = Path(relpath).parts
    return parts[0] if len(parts) > 1 else None


def asserted_identity(faces: pd.DataFrame, th: ModelThresholds) -> np.ndarray:
    """Row mask of the faces that are the folder's person (at most one per photo)."""
    x = _emb(faces)
    keys, photos = faces["face_key"].to_numpy(), faces["sha256"].to_numpy()
    lab = cluster_faces(keys, x, photos, th.cluster).labels
    sizes = np.bincount(lab)
    if sizes.max() >= 2:
        seed = lab == int(np.argmax(sizes))  # labels are numbered by size: 0 is the largest
    else:  # no two faces agree: the largest face of each photo
        area = ((faces["x2"] - faces["x1"]) * (faces["y2"] - faces["y1"])).to_numpy()
        seed = np.zeros(len(faces), bool)
        for p in np.unique(photos):
            rows = np.flatnonzero(photos == p)
            seed[rows[np.argmax(area[rows])]] = True
    keep = np.ones(len(faces), bool)
    c = normalize(x[seed].sum(0, keepdims=True))[0]
    for t in (th.outlier, th.outlier_tight):
        d = 1.0 - x @ c
        keep = d <= t
        if not keep.any():
            break
        c = normalize(x[keep].sum(0, keepdims=True))[0]
    d = 1.0 - x @ c
    out = np.zeros(len(faces), bool)
    for p in np.unique(photos):  # cannot-link: one face per photo, the closest
        rows = np.flatnonzero((photos == p) & keep)
        if len(rows):
            out[rows[np.argmin(d[rows])]] = True
    return out


@dataclass(frozen=True)
class KnownIdentity:
    ref: str  # "ledger:<name>" or "<source>/<entry name>"
    centroid: np.ndarray


def identities_manifest(faces: pd.DataFrame, th: ModelThresholds, source: str, model_id: str = "") -> RefineManifest:
    """``facesets identities``: one asserted identity per top-level sub-folder."""
    labels = faces["relpath"].map(folder_label) if len(faces) else pd.Series([], dtype=object)
    entries, dropped, loose = [], 0, int(labels.isna().sum())
    for label in sorted(labels.dropna().unique()):
        rows = faces[(labels == label).to_numpy()].sort_values("face_key").reset_index(drop=True)
        mask = asserted_identity(rows, th)
        dropped += int((~mask).sum())
        if mask.any():
            name = safe_label(label)
            entries.append(
                entry(name, rows[mask], _emb(rows[mask]), kind="identities", label=label, marker=f"{name}.txt")
            )
    log.info(
        "identities: %d folders, %d faces kept, %d faces dropped (bystanders/outliers), %d faces at the root ignored",
        len(entries),
        sum(e["faces"] for e in entries),
        dropped,
        loose,
    )
    names = [e["name"] for e in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"source {source!r}: two folders map to the same identity name: {sorted(names)}")
    stats = {"faces": len(faces), "kept": sum(e["faces"] for e in entries), "dropped": dropped, "root_faces": loose}
    return refine_manifest(entries, stats, source=source, model_id=model_id, kind="identities")


def routable(ledger: L.Ledger) -> list[L.Identity]:
    """The ledger identities mixed sources route to: every one but the eras."""
    return [i for i in ledger.identities if i.kind != "era"]


def known_identities(
    ledger_path: Path | None, manifests: Sequence[tuple[str, Path]], model_id: str
) -> list[KnownIdentity]:
    """The identities a mixed source routes to: the ledger's and earlier sources' proposals."""
    out: list[KnownIdentity] = []
    if ledger_path is not None and Path(ledger_path).exists():
        for ident in routable(L.load(Path(ledger_path))):
            c = ident.centroid(model_id)
            if c is not None:
                out.append(KnownIdentity(f"ledger:{ident.name}", c))
    for source, path in manifests:
        m = read_refine_manifest(Path(path) / REFINE_MANIFEST if Path(path).is_dir() else path)
        if m.get("model_id", model_id) != model_id:
            continue
        for e in m.get("facesets", []):
            if e.get("kind") == "routed" or not e.get("centroid"):
                continue  # routed sets point at identities already in the list
            out.append(KnownIdentity(f"{source}/{e['name']}", normalize(np.asarray([e["centroid"]], np.float64))[0]))
    return out


# How much (a fraction of the count the last route saw) the faces other sources gave an identity
# may change before a mixed source is routed again; below 1 / ROUTE_MEMBER_DRIFT faces (20), one
# face is enough. A source's own routed faces never count: they moved the centroid toward faces
# it has already routed, and counting them would reroute it after every merge of its own.
ROUTE_MEMBER_DRIFT = 0.05


def routing_state(ledger_path: Path, source: str) -> dict[str, Any]:
    """What routing ``source`` takes from the ledger, as route's state file holds it: per non-era
    identity its number, name and kind, and how many of its faces come from other sources (the
    faces that make its centroid what this source did not). Empty without a ledger."""
    idents = routable(L.load(Path(ledger_path))) if Path(ledger_path).exists() else []
    return {
        "identities": [
            {
                "number": i.number,
                "name": i.name,
                "kind": i.kind,
                "others": sum(m.source != source for m in i.members.values()),
            }
            for i in sorted(idents, key=lambda i: i.number)
        ]
    }


def same_routing(old: Mapping[str, Any], new: Mapping[str, Any], drift: float = ROUTE_MEMBER_DRIFT) -> bool:
    """Whether ``new`` is, for routing, the library ``old`` was: the same identities (number, name,
    kind), none whose other-source faces changed by more than ``drift`` of their count, the other
    keys (schema version) equal."""
    if {k: v for k, v in old.items() if k != "identities"} != {k: v for k, v in new.items() if k != "identities"}:
        return False
    a, b = old.get("identities", []), new.get("identities", [])
    if [(i["number"], i["name"], i["kind"]) for i in a] != [(i["number"], i["name"], i["kind"]) for i in b]:
        return False
    return all(abs(j["others"] - i["others"]) <= drift * i["others"] for i, j in zip(a, b, strict=True))


def route_faces(faces: pd.DataFrame, known: Sequence[KnownIdentity], threshold: float) -> np.ndarray:
    """Per face: index into ``known`` of the identity it is routed to, or -1."""
    if not len(faces) or not known:
        return np.full(len(faces), -1, np.int64)
    protos = np.stack([k.centroid for k in known])
    m = nearest_identity(_emb(faces), faces["sha256"].to_numpy(), protos, np.arange(len(known)), threshold)
    return m.identity


def routed_name(ref: str) -> str:
    return "to_" + safe_label(ref.replace("ledger:", "").replace("/", "__"))


def route_manifest(
    faces: pd.DataFrame,
    quality: pd.DataFrame | None,
    known: Sequence[KnownIdentity],
    th: ModelThresholds,
    refine_settings: Mapping[str, Any],
    source: str,
    model_id: str = "",
    cluster: Mapping[str, Any] | None = None,
) -> RefineManifest:
    """``facesets route``: route to known identities, discover the rest with refine's pipeline
    (its cluster engine set by ``cluster``, the ``cluster`` config section, as for refine)."""
    from facesets.refine import quality_gate, refine_faces

    faces = faces.sort_values("face_key").reset_index(drop=True)
    target = route_faces(faces, known, th.match)
    gate, rejected = quality_gate(faces, quality, refine_settings)
    gate = np.asarray(gate, bool)
    entries = []
    for j in sorted(set(target[target >= 0].tolist()), key=lambda j: known[j].ref):
        rows = (target == j) & gate
        if rows.any():
            sub = faces[rows]
            entries.append(entry(routed_name(known[j].ref), sub, _emb(sub), kind="routed", route_to=known[j].ref))
    rest = faces[target < 0].reset_index(drop=True)
    discovered, stats = refine_faces(rest, quality, dict(refine_settings), th, cluster=cluster)
    for e in discovered:
        e.setdefault("kind", "discovered")
        e.setdefault("marker", f"{source}.txt")
    routed_faces = int((target >= 0).sum())
    route_stats = {
        "faces": len(faces),
        "routed": routed_faces,
        "routed_after_gates": int(sum(e["faces"] for e in entries)),
        "routed_rejected_by_gate": {k: int(v) for k, v in dict(rejected).items()},
        "known_identities": len(known),
        "discovery": stats,
    }
    return refine_manifest(
        entries + list(discovered), route_stats, source=source, model_id=model_id, kind="mixed", settings=refine_settings
    )


def dry_run_report(manifest: Mapping[str, Any]) -> str:
    """What a mixed source would add, for ``facesets route --dry-run``."""
    lines = [f"source {manifest['source']}: {manifest['stats']['faces']} faces"]
    routed = [e for e in manifest["facesets"] if e.get("kind") == "routed"]
    disc = [e for e in manifest["facesets"] if e.get("kind") != "routed"]
    lines.append(f"routed to known identities: {sum(e['faces'] for e in routed)} faces")
    lines += [f"  {e['route_to']}: {e['faces']} faces, {e['unique_images']} images" for e in routed]
    d = manifest["stats"]["discovery"]
    lines.append(f"discovery: {json.dumps(d, sort_keys=True)}")
    lines.append(f"new identities that survive the gates: {len(disc)}")
    lines += [f"  {e['name']}: {e['faces']} faces, {e['unique_images']} images" for e in disc]
    return "\n".join(lines)
