"""One copy of a file's bytes on disk: hard links where the file system allows, a copy otherwise.

The crops of export-swap, the library and its ``.faces/`` keep are the same bytes; each place
gets a hard link to one file (the crop cache's), so a crop is stored once. Every file linked
this way is immutable: its writers only ever replace it (temp + rename, ``facesets.atomic``),
never write into it, so a link never sees another place's change. A link is an independent
name: deleting the file it was made from (the crop cache, an export) leaves it intact.

Where a link cannot be made (another device, a file system without hard links, Windows shares
that refuse them), the bytes are copied: the same result, only without the saving.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from facesets.atomic import TMP_PREFIX


def link_or_copy(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> bool:
    """``dest`` becomes a name of ``src``'s bytes, atomically (temp + rename). True when hard-linked."""
    src, dest = Path(src), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{dest.name}.", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        tmp.unlink()  # os.link needs a free name; mkstemp only reserved a unique one
        try:
            os.link(src, tmp)
            linked = True
        except FileNotFoundError:
            raise
        except OSError:  # EXDEV, EPERM, ENOTSUP...: copy the bytes instead
            shutil.copyfile(src, tmp)
            linked = False
        os.replace(tmp, dest)
        return linked
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Both names are one file (one inode); False when either is missing."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
