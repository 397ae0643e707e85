"""A full disk (ENOSPC, quota) as one clear message instead of a traceback.

``guard(folder, what)`` wraps a write: a full disk becomes ``DiskFullError`` naming what was
being written and where. ``is_disk_full`` also recognises the errors pyarrow raises (their
errno is often unset). The CLI entry point prints ``message(exc)`` and exits 3; every write is
atomic (facesets/atomic.py), so nothing written before is lost and the same command resumes
once space is freed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
FULL_TEXTS = ("No space left on device", "Disk quota exceeded")
EXIT_STATUS = 3


class DiskFullError(OSError):
    """No space (or quota) left where ``folder`` lives, while writing ``what``."""

    def __init__(self, folder: str | os.PathLike[str], what: str, cause: BaseException | None = None) -> None:
        super().__init__(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(folder))
        self.folder = os.fspath(folder)
        self.what = what
        self.cause = cause


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, DiskFullError):
        return True
    if not isinstance(exc, OSError):
        return False
    return exc.errno in FULL_ERRNOS or any(t in str(exc) for t in FULL_TEXTS)


@contextlib.contextmanager
def guard(folder: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Turn a full disk inside the block into ``DiskFullError(folder, what)``."""
    try:
        yield
    except DiskFullError:
        raise
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFullError(folder, what, exc) from exc
        raise


def _free(folder: str) -> str:
    p = Path(folder)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        u = shutil.disk_usage(p)
    except OSError:
        return "free space unknown"
    return f"{u.free / 2**20:.0f} MiB free of {u.total / 2**30:.1f} GiB"


def message(exc: BaseException) -> str:
    """What is full, where, and that the same command resumes."""
    if isinstance(exc, DiskFullError):
        where, what = exc.folder, exc.what
    else:
        where = getattr(exc, "filename", None) or "the output folder"
        what = "output"
    return (
        f"disk full: no space left on the filesystem holding {where} while writing {what} "
        f"({_free(str(where)) if where != 'the output folder' else 'free space unknown'}). "
        "Nothing already written is lost: free some space there and run the same command again to resume."
    )
