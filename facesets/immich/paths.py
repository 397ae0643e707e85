"""Untrusted server paths -> safe relative paths under one local folder.

``originalPath`` is chosen by whoever uploaded or by an external library's folder layout: it
may hold ``..``, absolute paths, Windows drive letters, UNC prefixes, NUL and control bytes,
reserved Windows names or names longer than a filesystem allows. ``safe_relpath`` maps any
string to a relative POSIX path made only of ordinary components; ``path_under`` joins it to
the root and checks, after resolving symlinks, that the result is still inside.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path

MAX_COMPONENT_BYTES = 160  # leaves room for a "~<id>" suffix and a temp prefix under 255
MAX_PATH_BYTES = 1024  # the relative part; the work root comes on top
MAX_DEPTH = 32
_FORBIDDEN = re.compile(r'[\x00-\x1f\x7f<>:"|?*\\]')
_DRIVE = re.compile(r"^[A-Za-z]:")
_RESERVED = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"} | {f"{p}{i}" for p in ("COM", "LPT") for i in range(10)}


class UnsafePathError(ValueError):
    """A computed path would leave the staging folder (a bug guard; never expected)."""


def _short_hash(text: str, n: int = 8) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:n]


def _cut_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 form fits ``max_bytes`` (never splits a character)."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= max_bytes:
        return text
    return data[:max_bytes].decode("utf-8", "ignore")


def sanitize_component(name: str) -> str:
    """One path component made safe on Linux, macOS and Windows filesystems."""
    name = unicodedata.normalize("NFC", name)
    name = _FORBIDDEN.sub("_", name)
    name = name.encode("utf-8", "replace").decode("utf-8")  # lone surrogates -> '?'-free text
    name = name.replace("?", "_")
    name = name.rstrip(" .")  # Windows drops trailing dots and spaces
    if not name:
        return "_"
    if name.startswith("."):  # no hidden files: temp files and dot-excludes stay unambiguous
        name = "_" + name[1:]
    if name.split(".", 1)[0].upper().rstrip(" ") in _RESERVED:
        name = "_" + name
    if len(name.encode("utf-8")) > MAX_COMPONENT_BYTES:
        stem, dot, ext = name.rpartition(".")
        if not dot or len(ext.encode("utf-8")) > 16 or not stem:
            stem, ext = name, ""
        tag = "-" + _short_hash(name)
        room = MAX_COMPONENT_BYTES - len(tag.encode()) - (len(ext.encode("utf-8")) + 1 if ext else 0)
        name = _cut_utf8(stem, room).rstrip(" .") + tag + ("." + ext if ext else "")
    return name


def split_server_path(original_path: str) -> list[str]:
    """Components of a server path, with roots, drives, UNC prefixes, '.' and '..' removed."""
    text = original_path.replace("\\", "/")
    parts = []
    for i, raw in enumerate(text.split("/")):
        part = raw
        if i == 0 or not parts:
            part = _DRIVE.sub("", part)  # C:, C:relative
        if part in ("", ".", "..") or part.strip(" .") == "" or (not parts and part == "?"):
            continue  # '?' first: the \\?\ long-path prefix  # '..' is dropped, never resolved: nothing can climb
        parts.append(part)
    return parts


def safe_relpath(original_path: str, fallback_name: str = "asset") -> str:
    """A relative POSIX path for ``original_path`` that cannot leave its root.

    Deterministic (the same input gives the same path on every run and machine), readable
    (ordinary names pass unchanged), bounded (component and total length, depth).
    """
    parts = [sanitize_component(p) for p in split_server_path(original_path)]
    if not parts:
        parts = [sanitize_component(fallback_name or "asset")]
    if len(parts) > MAX_DEPTH or len("/".join(parts).encode("utf-8")) > MAX_PATH_BYTES:
        # keep the file name and the nearest folders; a hash of the whole path keeps it unique
        keep = [parts[-1]]
        for p in reversed(parts[:-1]):
            if len(keep) >= MAX_DEPTH - 1 or len("/".join([p, *keep]).encode()) > MAX_PATH_BYTES - 20:
                break
            keep.insert(0, p)
        parts = [f"_long-{_short_hash(original_path, 12)}", *keep]
    return "/".join(parts)


def with_suffix_tag(relpath: str, tag: str) -> str:
    """``a/b/name.jpg`` + ``tag`` -> ``a/b/name~tag.jpg`` (collision disambiguation)."""
    head, _, name = relpath.rpartition("/")
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    new = f"{stem}~{tag}" + (f".{ext}" if ext else "")
    return f"{head}/{new}" if head else new


def collision_key(relpath: str) -> str:
    """Two paths that one filesystem may treat as the same file (case, Unicode form)."""
    return unicodedata.normalize("NFC", relpath).casefold()


class PathClaims:
    """Relative file paths already taken, and the folders they imply (case-insensitively).

    A new path conflicts when it equals a taken file, equals a folder that holds taken files,
    or passes through a taken file as if it were a folder.
    """

    def __init__(self, taken: Iterable[str] = ()) -> None:
        self.files: set[str] = set()
        self.dirs: set[str] = set()
        for p in taken:
            self.add(p)

    def conflicts(self, relpath: str) -> bool:
        key = collision_key(relpath)
        if key in self.files or key in self.dirs:
            return True
        parts = key.split("/")
        return any("/".join(parts[:i]) in self.files for i in range(1, len(parts)))

    def add(self, relpath: str) -> None:
        key = collision_key(relpath)
        self.files.add(key)
        parts = key.split("/")
        for i in range(1, len(parts)):
            self.dirs.add("/".join(parts[:i]))

    def claim(self, relpath: str, asset_id: str) -> str:
        """``relpath`` if free, else the same name tagged with more and more of the asset id."""
        candidate, n = relpath, 8
        while self.conflicts(candidate):
            candidate = with_suffix_tag(relpath, asset_id.replace("-", "")[:n])
            n += 4
            if n > 40:
                candidate = with_suffix_tag(relpath, _short_hash(asset_id + relpath, 16))
                break
        self.add(candidate)
        return candidate


def path_under(root: Path, relpath: str) -> Path:
    """``root / relpath``, refusing anything that would resolve outside ``root``."""
    if not relpath or relpath.startswith("/") or "\x00" in relpath:
        raise UnsafePathError(f"refusing unsafe relative path {relpath!r}")
    parts = relpath.split("/")
    if any(p in ("", ".", "..") for p in parts) or _DRIVE.match(relpath):
        raise UnsafePathError(f"refusing unsafe relative path {relpath!r}")
    base = Path(os.path.realpath(root))
    target = base.joinpath(*parts)
    real_parent = Path(os.path.realpath(target.parent))
    if real_parent != base and base not in real_parent.parents:
        raise UnsafePathError(f"refusing path {relpath!r}: it resolves outside {base}")
    return target
