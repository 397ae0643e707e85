"""Rerun triggers that live in files, so change detection needs no ``.snakemake/`` metadata.

Snakemake reruns a job when an input is newer than its outputs, with or without its own
records. A *state file* holds what a job's result depends on besides its input files (the
fingerprint of a source folder, the settings that change results) and is rewritten only when
that content changes: a new photo or a changed setting gives it a new mtime and reruns the job;
an unchanged one leaves it alone. It is a fact about the sources and the config, never a
transient condition, and deleting it costs one rerun.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from facesets.atomic import write_text


def state_text(payload: Mapping[str, Any]) -> str:
    return json.dumps(payload, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def write_if_changed(path: str | os.PathLike[str], text: str) -> str:
    """Write ``text`` to ``path`` atomically unless it already holds exactly that; return the path."""
    p = Path(path)
    try:
        if p.read_text(encoding="utf-8") == text:
            return str(path)
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    write_text(p, text)
    return str(path)


def state_file(path: str | os.PathLike[str], payload: Mapping[str, Any]) -> str:
    """The state file at ``path`` holding ``payload`` (rewritten only when it changed)."""
    return write_if_changed(path, state_text(payload))


def state_file_unless_same(
    path: str | os.PathLike[str],
    payload: Mapping[str, Any],
    same: Callable[[Mapping[str, Any], Mapping[str, Any]], bool],
) -> str:
    """The state file at ``path``, rewritten with ``payload`` only when ``same(stored, payload)``
    is false (a file that is missing or does not parse is rewritten).

    For a payload that drifts a little on every run (centroids): the file keeps the state the
    last rewrite saw, so small moves add up against it and a rerun comes only once they matter;
    a run that changes nothing material leaves the file, and the job, alone.
    """
    p = Path(path)
    try:
        stored = json.loads(p.read_text(encoding="utf-8"))
    except (FileNotFoundError, UnicodeDecodeError, json.JSONDecodeError):
        stored = None
    if isinstance(stored, dict) and same(stored, payload):
        return str(path)
    write_text(p, state_text(payload))
    return str(path)
