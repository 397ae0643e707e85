"""Atomic file writes: write to a temp file in the same folder, fsync, rename.

A reader never sees a half-written file, and a crash leaves at most a stray
``.tmp-*`` file that readers ignore and the next writer may delete. Whole output folders
are written the same way: ``staged_dir`` yields a temp folder beside the output and swaps
it in (``replace_dir``) only when the block finishes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside ``target``; rename it onto ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + target.name + ".", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | os.PathLike[str], text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: str | os.PathLike[str], obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def replace_dir(tmp: Path, out: Path) -> None:
    """Swap a finished temp folder in place of ``out`` (never a half-written ``out``)."""
    old = None
    if out.exists():
        old = out.with_name(f".old-{out.name}-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_stale_temps(out: Path) -> None:
    """Delete temp/old folders a killed run of this same output left beside it (one writer per
    output: Snakemake locks it; by hand, do not run two commands on one output)."""
    for p in list(out.parent.glob(f"{TMP_PREFIX}{out.name}.*")) + list(out.parent.glob(f".old-{out.name}-*")):
        shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temp folder beside ``out``; when the block ends without an error, swap it in
    place of ``out``; on any error (Ctrl-C included) delete it and leave ``out`` as it was."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + out.name + ".", dir=out.parent))
    try:
        yield tmp
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
