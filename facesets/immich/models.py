"""Parsing of the few Immich responses the stage step reads, for v2.7.x through v4.

Only fields that both versions define are read, and only ``id``, ``checksum``,
``originalPath`` and ``type`` are required; everything else has a safe default. Differences
that do not matter here (v3: ``duration`` in integer ms, no ``unassignedFaces``, no faces
inside ``people``) are ignored, never parsed.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any

from facesets.immich.geometry import FaceBox


class ResponseShapeError(ValueError):
    """The server answered with JSON that is not the documented shape."""


@dataclass(frozen=True)
class Asset:
    id: str
    checksum: str  # base64 SHA-1 of the original
    original_path: str
    original_file_name: str
    type: str
    width: int | None  # oriented (Immich swaps for EXIF orientations 5-8)
    height: int | None
    is_trashed: bool
    is_offline: bool
    visibility: str | None
    owner_id: str | None
    library_id: str | None = None  # set for assets of an external library
    updated_at: str | None = None  # changes when Immich changes the asset (a late face detection may)
    is_edited: bool = False  # since v2.5 /faces of an edited asset are in the edited full-size frame

    @property
    def path_checksum(self) -> bool:
        """True when ``checksum`` is Immich's SHA-1 of ``"path:" + originalPath`` (external
        libraries hash the path, not the bytes; library service, ``sha1-path``), so the
        downloaded bytes cannot be checked against it."""
        return self.checksum == sha1_path_checksum(self.original_path)


def sha1_path_checksum(original_path: str) -> str:
    """The base64 SHA-1 of ``"path:" + originalPath``: an external-library asset's checksum."""
    digest = hashlib.sha1(("path:" + original_path).encode("utf-8", "surrogatepass")).digest()
    return base64.b64encode(digest).decode()


def _need(d: dict[str, Any], key: str, kind: type, what: str) -> Any:
    v = d.get(key)
    if not isinstance(v, kind):
        raise ResponseShapeError(f"{what}: field {key!r} missing or not a {kind.__name__}")
    return v


def _int_or_none(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def parse_asset(d: Any) -> Asset:
    if not isinstance(d, dict):
        raise ResponseShapeError("search result item is not an object")
    what = f"asset {d.get('id')!r}"
    w, h = _int_or_none(d.get("width")), _int_or_none(d.get("height"))
    exif = d.get("exifInfo") if isinstance(d.get("exifInfo"), dict) else None
    if (w is None or h is None) and exif:  # only present when the caller asked for exif
        from facesets.immich.geometry import oriented_size

        size = oriented_size(
            None,
            None,
            _int_or_none(exif.get("exifImageWidth")),
            _int_or_none(exif.get("exifImageHeight")),
            exif.get("orientation"),
        )
        w, h = size if size else (None, None)
    return Asset(
        id=_need(d, "id", str, what),
        checksum=_need(d, "checksum", str, what),
        original_path=_need(d, "originalPath", str, what),
        original_file_name=d.get("originalFileName") if isinstance(d.get("originalFileName"), str) else "",
        type=_need(d, "type", str, what),
        width=w,
        height=h,
        is_trashed=bool(d.get("isTrashed", False)),
        is_offline=bool(d.get("isOffline", False)),
        visibility=d.get("visibility") if isinstance(d.get("visibility"), str) else None,
        owner_id=d.get("ownerId") if isinstance(d.get("ownerId"), str) else None,
        library_id=d.get("libraryId") if isinstance(d.get("libraryId"), str) else None,
        updated_at=d.get("updatedAt") if isinstance(d.get("updatedAt"), str) else None,
        is_edited=d.get("isEdited") is True,
    )


@dataclass(frozen=True)
class SearchPage:
    assets: list[Asset]
    next_page: int | None
    next_cursor: str | None = None  # v3.2+ filter-tree search: the opaque cursor of the next page


def parse_search_page(body: Any) -> SearchPage:
    """``POST /api/search/metadata`` -> the page's assets and the next page number."""
    if not isinstance(body, dict) or not isinstance(body.get("assets"), dict):
        raise ResponseShapeError("search/metadata: expected an object with 'assets'")
    block = body["assets"]
    items = block.get("items")
    if not isinstance(items, list):
        raise ResponseShapeError("search/metadata: 'assets.items' missing or not a list")
    nxt = block.get("nextPage")
    if nxt is None:
        next_page = None
    else:
        try:
            next_page = int(str(nxt))
        except ValueError:
            raise ResponseShapeError(f"search/metadata: 'nextPage' is not a page number: {str(nxt)[:40]!r}") from None
    return SearchPage([parse_asset(a) for a in items], next_page)


def parse_cursor_page(body: Any) -> SearchPage:
    """v3.2+ ``POST /api/search/metadata`` with a ``filter`` tree -> assets and ``nextCursor``."""
    if not isinstance(body, dict) or not isinstance(body.get("assets"), dict):
        raise ResponseShapeError("search/metadata: expected an object with 'assets'")
    block = body["assets"]
    items = block.get("items")
    if not isinstance(items, list):
        raise ResponseShapeError("search/metadata: 'assets.items' missing or not a list")
    if "nextCursor" not in block:
        raise ResponseShapeError("search/metadata: 'assets.nextCursor' missing (not the v3.2 search API?)")
    nxt = block["nextCursor"]
    if nxt is not None and (not isinstance(nxt, str) or not nxt):
        raise ResponseShapeError("search/metadata: 'nextCursor' is not a string or null")
    return SearchPage([parse_asset(a) for a in items], None, nxt)


def parse_faces(body: Any) -> list[FaceBox]:
    """``GET /api/faces?id=<asset>`` -> boxes in the pixel space of ``imageWidth`` x ``imageHeight``
    (the preview; for an asset edited in Immich v2.5+, the edited full-size image)."""
    if not isinstance(body, list):
        raise ResponseShapeError("faces: expected a list")
    out = []
    for f in body:
        if not isinstance(f, dict):
            raise ResponseShapeError("faces: item is not an object")
        try:
            out.append(
                FaceBox(
                    float(f["boundingBoxX1"]),
                    float(f["boundingBoxY1"]),
                    float(f["boundingBoxX2"]),
                    float(f["boundingBoxY2"]),
                    int(f["imageWidth"]),
                    int(f["imageHeight"]),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ResponseShapeError(f"faces: box field missing or not a number ({exc})") from None
    return out
