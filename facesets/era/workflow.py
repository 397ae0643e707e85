"""What rules/era.smk passes to ``facesets era-split``: the seed spec and the settings param."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any


def workflow_seed_spec(eras: Mapping[str, Any], output_root: str, identity: str) -> str:
    """The ``--centroid-from`` of the workflow's split of ``identity`` (config ``eras.centroid_from``)."""
    base = eras.get("centroid_from") or f"{output_root}/facesets_swap_ready/ledger.json"
    return f"{base}#{identity}"


def workflow_settings(eras: Mapping[str, Any]) -> str:
    """The ``eras`` section as the rule's settings param, minus the keys that choose *what* is split."""
    return json.dumps({k: v for k, v in eras.items() if k not in ("identities", "centroid_from")}, sort_keys=True)


def workflow_export_args(settings: Mapping[str, Any], sources: Sequence[str], work_root: str, model_dir: str) -> str:
    """``era-split`` export flags for the workflow (as rules/export.smk passes them to export-swap),
    or "" when ``eras.export`` is off. ``settings``: the validated global config."""
    import shlex

    if not settings["eras"]["export"]:
        return ""
    backend = settings["backend"]
    export = {k: v for k, v in settings["export"].items() if k != "workers"}
    redetect = {backend: settings["embed"][backend]} if backend == "insightface" else {}
    dups = [f"{work_root}/sources/{s}/duplicates.json" for s in sources]
    parts = ["--export", "--backend", backend, "--export-settings", json.dumps(export, sort_keys=True)]
    parts += ["--embed-settings", json.dumps(redetect, sort_keys=True), "--model-dir", model_dir]
    parts += ["--crop-cache", f"{work_root}/cache/crops", "--duplicates", *dups]
    return " ".join(shlex.quote(p) for p in parts)
