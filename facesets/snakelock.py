"""Stale Snakemake locks: after a SIGKILL or a power loss, ``.snakemake/locks/`` keeps the dead
run's lock files and every later run stops with ``LockException`` until ``--unlock``.

The README promises "run the same command again". ``clear_stale_locks`` (called by the
Snakefile in the main process, before Snakemake takes its lock) removes the locks only when
their owner is certainly gone: no live process on this host runs Snakemake in this working
directory, and the owner record (written beside the locks by every run of this workflow) names
this host. Locks from another host (a shared filesystem) or from an owner we cannot identify
are left alone, and the message says exactly what to type.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from facesets.atomic import write_json

OWNER = "facesets-owner.json"


@dataclass(frozen=True)
class LockCheck:
    """What ``clear_stale_locks`` found and did (for the log line)."""

    removed: int
    message: str | None


def _live_snakemakes(workdir: Path, me: int) -> list[int]:
    """PIDs of other processes on this host whose command is snakemake and cwd is ``workdir``."""
    out = []
    proc = Path("/proc")
    if not proc.is_dir():
        return out
    target = os.path.realpath(workdir)
    for d in proc.iterdir():
        if not d.name.isdigit() or int(d.name) in (me, os.getppid()):
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ")
            cwd = os.readlink(d / "cwd")
        except OSError:
            continue
        if b"snakemake" in cmd and os.path.realpath(cwd) == target:
            out.append(int(d.name))
    return out


def _owner(lockdir: Path) -> dict:
    try:
        return json.loads((lockdir / OWNER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def clear_stale_locks(workdir: Path, me: int | None = None) -> LockCheck:
    """Remove ``workdir/.snakemake/locks/*`` when their owner is gone; record this run as owner."""
    me = os.getpid() if me is None else me
    lockdir = Path(workdir) / ".snakemake" / "locks"
    locks = sorted(p for p in lockdir.glob("*.lock")) if lockdir.is_dir() else []
    host = socket.gethostname()
    live = _live_snakemakes(Path(workdir), me)
    removed, message = 0, None
    if locks:
        owner_host = _owner(lockdir).get("host", host)
        if live:
            message = f"snakemake is running in {workdir} (pid {', '.join(map(str, live))}): wait for it to end"
        elif owner_host != host:
            message = (
                f"{lockdir} is held by a run on host {owner_host!r}; if it is not running any more,"
                " type: snakemake --unlock  (then the same command again)"
            )
        else:
            for p in locks:
                try:
                    p.unlink()
                    removed += 1
                except FileNotFoundError:
                    pass
            message = f"removed {removed} stale lock(s) in {lockdir} left by a run that was killed"
    if not live:
        write_json(lockdir / OWNER, {"host": host, "pid": me})
    return LockCheck(removed, message)
