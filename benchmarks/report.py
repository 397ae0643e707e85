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
