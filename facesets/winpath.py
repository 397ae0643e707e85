"""WSL paths as a Windows program sees them, and back.

A Windows program started from WSL (the DirectML embed, profiles/directml) gets its file
arguments as Windows paths: files on a Windows drive mounted at ``/mnt/<letter>/`` become
``<LETTER>:\\...``; every other Linux path goes through the WSL share,
``\\\\wsl.localhost\\<distro>\\...`` (``\\\\wsl$\\<distro>\\...`` on older Windows). ``wslpath -w``
does this on a real WSL (and knows a changed automount root); :func:`to_windows` is the same
rule in pure Python for where ``wslpath`` is absent (and for tests). :func:`rebase` is how the
Windows side opens the photos a (Linux-side) listing names: under a root given as a
``--path-map LINUX_ROOT=WINDOWS_ROOT`` pair.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

UNC_HOSTS = ("wsl.localhost", "wsl$")
_DRIVE_MOUNT = re.compile(r"^/mnt/([A-Za-z])(?:/(.*))?$")
_DRIVE_PATH = re.compile(r"^([A-Za-z]):(?:[\\/](.*))?$")
_WSL_UNC = re.compile(r"^[\\/]{2}(wsl\.localhost|wsl\$)[\\/]([^\\/]+)(?:[\\/](.*))?$", re.IGNORECASE)


def to_windows(path: str, distro: str | None, unc_host: str = "wsl.localhost") -> str:
    """An absolute WSL path as Windows sees it (the pure-Python twin of ``wslpath -w``)."""
    if not posixpath.isabs(path):
        raise ValueError(f"{path!r}: only absolute paths can be translated for Windows")
    norm = posixpath.normpath(path)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    m = _DRIVE_MOUNT.match(norm)
    if m:
        rest = (m.group(2) or "").replace("/", "\\")
        return f"{m.group(1).upper()}:\\{rest}"
    if not distro:
        raise ValueError(
            f"{path!r} is not on a Windows drive (/mnt/<letter>/...): translating it needs the WSL "
            "distribution name (config embed_host.wsl_distro, or WSL_DISTRO_NAME as WSL sets it)"
        )
    if unc_host not in UNC_HOSTS:
        raise ValueError(f"unc_host {unc_host!r}: allowed: {', '.join(UNC_HOSTS)}")
    return f"\\\\{unc_host}\\{distro}" + ("" if norm == "/" else norm.replace("/", "\\"))


def is_windows_path(path: str) -> bool:
    return bool(_DRIVE_PATH.match(path) or _WSL_UNC.match(path))


def _wslpath_w(path: str, wslpath: str) -> str:
    """``wslpath -w`` of the nearest existing ancestor (it rejects missing files), plus the rest."""
    head, tail = path, []
    while not os.path.exists(head) and head != "/":
        head, name = os.path.split(head)
        tail.append(name)
    proc = subprocess.run([wslpath, "-w", head], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ValueError(f"wslpath -w {head}: {proc.stderr.strip() or f'exit {proc.returncode}'}")
    out = proc.stdout.strip()
    return "\\".join([out.rstrip("\\"), *reversed(tail)]) if tail else out


@dataclass(frozen=True)
class WindowsPaths:
    """How this WSL translates paths for Windows: ``wslpath -w`` if present, else :func:`to_windows`."""

    distro: str | None = None
    unc_host: str = "wsl.localhost"
    wslpath: str | None = None

    @classmethod
    def detect(cls, distro: str | None = None, unc_host: str = "wsl.localhost") -> WindowsPaths:
        return cls(distro or os.environ.get("WSL_DISTRO_NAME") or None, unc_host, shutil.which("wslpath"))

    def __call__(self, path: str) -> str:
        absolute = os.path.abspath(path)
        if self.wslpath:
            return _wslpath_w(absolute, self.wslpath)
        return to_windows(absolute, self.distro, self.unc_host)


def rebase(path: str, maps: Sequence[tuple[str, str]]) -> str:
    """``path`` under the first ``(old_root, new_root)`` that contains it, re-rooted at new_root.

    new_root may be a Windows path; the rest of the path then takes backslashes.
    """
    for old, new in maps:
        old_n = old.rstrip("/") or "/"
        if path == old_n or path.startswith(old_n.rstrip("/") + "/"):
            rest = path[len(old_n) :].lstrip("/")
            if not rest:
                return new
            sep = "\\" if is_windows_path(new) else "/"
            return new.rstrip("\\/") + sep + (rest.replace("/", "\\") if sep == "\\" else rest)
    raise ValueError(f"{path}: under none of the --path-map roots {[old for old, _ in maps]}")


def parse_path_map(spec: str) -> tuple[str, str]:
    """``"/mnt/nas/photos=\\\\wsl.localhost\\Debian\\mnt\\nas\\photos"`` -> (old, new)."""
    old, sep, new = spec.partition("=")
    if not sep or not old.startswith("/") or not new:
        raise ValueError(f"--path-map {spec!r}: expected /LINUX/ROOT=HOST_ROOT")
    return old, new


def path_locator(specs: Sequence[str], paths: Iterable[str]) -> Callable[[str], str]:
    """From ``--path-map`` specs: where this host opens each listing path, checked up front.

    Every path must fall under a map and every host root must be a folder here; otherwise
    ValueError before anything is analysed (a wrong map must not record "file not found"
    errors in the face store).
    """
    maps = [parse_path_map(s) for s in specs]
    for old, new in maps:
        if not os.path.isdir(new):
            raise ValueError(f"--path-map {old}={new}: {new} is not a folder this host can read")
    for p in paths:
        rebase(p, maps)
    return lambda path: rebase(path, maps)
