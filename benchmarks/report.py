"""Shared by the benchmarks: replace one `## section` of docs/benchmarks.md, keep the others."""

from __future__ import annotations

import os
from pathlib import Path


def write_section(out: Path, title: str, section: str, header: str) -> None:
    """Replace (or add) the section whose heading line is ``title``; atomic write."""
    text = out.read_text(encoding="utf-8") if out.exists() else ""
    if not text.strip():
        text = header
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip() == title), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + section
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        after = "".join(lines[end:])
        new = "".join(lines[:start]) + section + ("\n" + after if after else "")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, out)


def machine_facts() -> dict:
    """CPU model, cores, RAM, OS and Python of this machine, for the benchmark sections."""
    import contextlib
    import platform

    cpu, mem = "unknown", "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        mem = next((f"{int(ln.split()[1]) / 1024**2:.1f} GiB" for ln in fh if ln.startswith("MemTotal:")), mem)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": cpu,
        "cores": f"{os.cpu_count()} logical ({usable} usable by this process)",
        "ram": mem,
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def utc_date() -> str:
    import subprocess
    import time

    try:
        return subprocess.run(["date", "-u"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime())
