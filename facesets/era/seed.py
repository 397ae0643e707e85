"""The seed of an era split: ``MANIFEST#NAME`` -> the curated identity's centroid (refine/export manifest or ledger)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facesets.clustering import normalize


@dataclass(frozen=True)
class Seed:
    """The curated identity an era split starts from."""

    spec: str
    manifest: str
    name: str
    centroid: np.ndarray  # L2-normalised
    model_id: str  # the embedding model the centroid belongs to


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise ValueError(f"{path}: not found") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None


def _ledger_centroid(ledger_path: str, obj: Any, name: str, model_id: str) -> np.ndarray:
    from facesets import ledger as L

    ident = L.from_json(obj, where=ledger_path).by_name(name)
    if ident is None:
        raise ValueError(f"{ledger_path}: no identity named {name!r} in the ledger")
    c = ident.centroid(model_id)
    if c is None:
        raise ValueError(f"{ledger_path}: identity {name!r} has no centroid for model {model_id!r}")
    return c


def load_seed(spec: str, model_id: str) -> Seed:
    """``MANIFEST.json#NAME`` -> the curated identity's centroid for the embedding model ``model_id``.

    MANIFEST is any manifest whose ``facesets`` entries carry ``name`` and ``centroid``
    (refine_manifest.json, an export manifest.json), or the identity ledger
    (facesets_swap_ready/ledger.json: per-model centroids). The canonical manifest.json holds
    no centroids: its ``ledger.json`` beside it is used.
    """
    path, sep, name = spec.rpartition("#")
    if not sep or not path or not name:
        raise ValueError(f"--centroid-from {spec!r}: expected MANIFEST.json#FACESET_NAME")
    obj = _read_json(path)
    if isinstance(obj, dict) and isinstance(obj.get("identities"), list):  # the ledger itself
        return Seed(spec, path, name, normalize(_ledger_centroid(path, obj, name, model_id)[None])[0], model_id)
    entries = obj.get("facesets") if isinstance(obj, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: no 'facesets' list (a refine/export manifest or the ledger is expected)")
    found = [e for e in entries + list(obj.get("thin_eras") or []) if isinstance(e, dict) and e.get("name") == name]
    if not found:
        names = ", ".join(str(e.get("name")) for e in entries[:20] if isinstance(e, dict))
        raise ValueError(f"{path}: no faceset named {name!r} (have: {names})")
    cent = found[0].get("centroid")
    beside = Path(path).with_name("ledger.json")
    if cent is None and beside.exists():  # the canonical manifest: centroids live in the ledger
        c = _ledger_centroid(str(beside), _read_json(str(beside)), name, model_id)
        return Seed(spec, str(beside), name, normalize(c[None])[0], model_id)
    if not isinstance(cent, list) or not cent:
        raise ValueError(f"{path}: faceset {name!r} has no 'centroid'")
    c = np.asarray(cent, np.float64)
    if not np.all(np.isfinite(c)) or np.linalg.norm(c) == 0:
        raise ValueError(f"{path}: faceset {name!r} has an invalid centroid")
    made_with = found[0].get("model_id") or obj.get("model_id")
    if isinstance(made_with, str) and made_with and made_with != model_id:
        raise ValueError(
            f"{path}: faceset {name!r} was made with model {made_with!r}, the face tables hold "
            f"{model_id!r}: centroids of different models cannot be compared"
        )
    return Seed(spec, path, name, normalize(c[None])[0], model_id)


def seed_digest(spec: str) -> str:
    """A short digest of the entry ``MANIFEST#NAME`` points at ("absent" when there is none yet).

    The workflow's rerun trigger (a Snakemake param): the split reruns when the curated identity
    changes, without making the ledger, which manifest-merge rewrites, an input. Never raises.
    """
    import hashlib

    path, _, name = spec.rpartition("#")
    try:
        obj = _read_json(path)
        if isinstance(obj, dict) and not isinstance(obj.get("identities"), list) and Path(path).name == "manifest.json":
            beside = Path(path).with_name("ledger.json")
            obj = _read_json(str(beside)) if beside.exists() else obj
        items = (obj.get("identities") or obj.get("facesets") or []) if isinstance(obj, dict) else []
        entry = next((e for e in items if isinstance(e, dict) and e.get("name") == name), None)
    except (ValueError, OSError):
        entry = None
    if entry is None:
        return "absent"
    return hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()[:16]
