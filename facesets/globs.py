"""Glob matching for include/exclude patterns (``**`` spans folders, case-insensitive)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache


@lru_cache(maxsize=256)
def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Translate a glob to a regex over '/'-separated relative paths.

    ``**/`` matches zero or more folders, ``*`` and ``?`` stay inside one path segment,
    ``[...]`` is a character class. Matching ignores case (NAS and Windows libraries mix
    ``.JPG`` and ``.jpg``).
    """
    i, out = 0, []
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = pattern.find("]", i + 1)
            if j == -1:
                out.append(re.escape(c))
                i += 1
            else:
                body = pattern[i + 1 : j].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z", re.IGNORECASE | re.DOTALL)


def matches(relpath: str, patterns: Iterable[str]) -> bool:
    return any(glob_to_regex(p).match(relpath) for p in patterns)


def selected(relpath: str, include: Iterable[str], exclude: Iterable[str]) -> bool:
    return matches(relpath, include) and not matches(relpath, exclude)
