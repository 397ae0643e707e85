"""``state.json`` of one Immich label: every asset seen and what became of it.

Written atomically (temp + rename) and often: right after the enumeration (so path claims
are fixed before any download), then at most every ``min_interval_s`` (stretched to 10x
the time a write takes, so a huge state does not dominate), and at the end, also after an
outage, Ctrl-C or an auth error. A crash between a file's rename and the next write loses
nothing: the file is found at its claimed path, checksum-verified locally, and adopted
without a download.

Record statuses: ``pending`` (seen, to do), ``staged`` (file saved: path, sha256, size),
``skipped`` (``reason``: not_image, trashed, offline, excluded, duplicate, no_face,
no_big_face, in_store), ``error`` (transient failure, ``errors`` counts them; retried on
the next run). The API key is never stored; keys are referred to by position, and every
string stored (``last_error`` above all: a server may echo the key in its error message) has
the keys of the run replaced by ``***``. A face-size skip remembers the asset's ``updatedAt``
and the ``min_face_short`` it was decided with; when either changes, the asset is asked again.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from facesets.atomic import write_json

log = logging.getLogger(__name__)
STATE_VERSION = 1
MAX_STORED_PATH = 2048
# Decisions taken from the enumeration alone: recomputed on every run (config or server may change).
SELECTION_REASONS = frozenset({"not_image", "trashed", "offline", "excluded", "duplicate"})
# Decisions that needed the network: kept, so a resumed run does not fetch them again.
FINAL_SKIPS = frozenset({"no_face", "no_big_face", "in_store"})


class State:
    """Owned by one thread (the stage's main loop); workers return results to it."""

    def __init__(self, path: Path, label: str, data: dict[str, Any] | None = None, min_interval_s: float = 1.0):
        self.secrets: tuple[str, ...] = ()  # redacted from every stored string (a server may echo a key)
        self.path = path
        self.label = label
        data = data or {}
        self.assets: dict[str, dict[str, Any]] = data.get("assets", {})
        self.runs: list[dict[str, Any]] = data.get("runs", [])
        self.min_interval_s = min_interval_s
        self._interval = min_interval_s
        self._last_save = 0.0
        self._dirty = False
        self.saves = 0

    @classmethod
    def load(cls, path: Path, label: str, min_interval_s: float = 1.0) -> State:
        if not path.exists():
            return cls(path, label, min_interval_s=min_interval_s)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("assets"), dict):
                raise ValueError("not a state object")
        except (OSError, ValueError) as exc:
            backup = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
            path.replace(backup)
            log.warning(
                "%s unreadable (%s): moved to %s, starting afresh (staged files are re-adopted)", path, exc, backup.name
            )
            return cls(path, label, min_interval_s=min_interval_s)
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"{path}: state version {data.get('version')!r}, this facesets writes {STATE_VERSION}")
        if data.get("label") != label:
            raise ValueError(f"{path}: belongs to label {data.get('label')!r}, not {label!r}")
        return cls(path, label, data, min_interval_s=min_interval_s)

    def get(self, asset_id: str) -> dict[str, Any] | None:
        return self.assets.get(asset_id)

    def set(self, asset_id: str, **fields: Any) -> dict[str, Any]:
        rec = self.assets.setdefault(asset_id, {})
        if "original_path" in fields and isinstance(fields["original_path"], str):
            fields["original_path"] = fields["original_path"][:MAX_STORED_PATH]
        for k, v in fields.items():
            if v is None:
                rec.pop(k, None)
            else:
                rec[k] = self.redact(v) if isinstance(v, str) else v
        self._dirty = True
        return rec

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret and secret in text:
                text = text.replace(secret, "***")
        return text

    def counts(self, ids: set[str] | None = None) -> dict[str, int]:
        out: dict[str, int] = {}
        for aid, rec in self.assets.items():
            if ids is not None and aid not in ids:
                continue
            key = rec.get("status", "pending")
            if key == "skipped":
                key = rec.get("reason", "skipped")
            out[key] = out.get(key, 0) + 1
        return out

    def maybe_save(self) -> None:
        if self._dirty and time.monotonic() - self._last_save >= self._interval:
            self.save()

    def save(self) -> None:
        t0 = time.monotonic()
        runs = [{k: self.redact(v) if isinstance(v, str) else v for k, v in r.items()} for r in self.runs[-20:]]
        write_json(self.path, {"version": STATE_VERSION, "label": self.label, "assets": self.assets, "runs": runs})
        took = time.monotonic() - t0
        self._interval = max(self.min_interval_s, 10 * took)
        self._last_save = time.monotonic()
        self._dirty = False
        self.saves += 1
