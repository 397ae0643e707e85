"""Immich face boxes -> face sizes in original pixels.

Immich detects faces on its preview (usually 1440 px on the long side, EXIF orientation
applied) and reports each box with the preview's size (``imageWidth`` x ``imageHeight``). The
prefilter needs the short edge in the original's oriented pixels, so boxes are scaled by
original size / preview size per axis.

An asset edited in Immich (``isEdited``; crop, rotate, mirror) is different since v2.5
(immich PR #27220): its boxes are in the *edited full-resolution* frame, whose size is
``imageWidth`` x ``imageHeight``. Those edits keep the pixel scale of the original, so a box's
short edge there is already its short edge in the original: no scaling (scaling by original /
edited size would inflate a cropped photo's faces).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

SIDEWAYS = {5, 6, 7, 8}  # EXIF orientations with a quarter turn: width and height swap


@dataclass(frozen=True)
class FaceBox:
    """One face as Immich reports it (preview pixel space)."""

    x1: float
    y1: float
    x2: float
    y2: float
    image_width: int
    image_height: int


def oriented_size(
    width: int | None,
    height: int | None,
    exif_width: int | None = None,
    exif_height: int | None = None,
    orientation: str | int | None = None,
) -> tuple[int, int] | None:
    """The original's oriented size: asset width/height, else EXIF size turned by orientation.

    Immich stores ``asset.width/height`` already oriented; ``exifImageWidth/Height`` are
    before orientation (5-8 swap them). None when neither is known.
    """
    if width and height and width > 0 and height > 0:
        return int(width), int(height)
    if exif_width and exif_height and exif_width > 0 and exif_height > 0:
        try:
            o = int(orientation) if orientation not in (None, "") else 1
        except (TypeError, ValueError):
            o = 1
        return (int(exif_height), int(exif_width)) if o in SIDEWAYS else (int(exif_width), int(exif_height))
    return None


def scale_factors(box: FaceBox, orig_w: int, orig_h: int) -> tuple[float, float] | None:
    """Per-axis preview -> original factors, or None when the preview size is unusable.

    When the original's width/height disagree with the preview's aspect but agree once swapped
    (a server that stored unrotated dimensions), the swapped size is used: the preview is
    what the boxes live in, so it decides the orientation.
    """
    if box.image_width <= 0 or box.image_height <= 0 or orig_w <= 0 or orig_h <= 0:
        return None
    preview_landscape = box.image_width >= box.image_height
    if (orig_w >= orig_h) != preview_landscape and orig_w != orig_h and box.image_width != box.image_height:
        straight = abs(orig_w / orig_h - box.image_width / box.image_height)
        swapped = abs(orig_h / orig_w - box.image_width / box.image_height)
        if swapped < straight:
            orig_w, orig_h = orig_h, orig_w
    return orig_w / box.image_width, orig_h / box.image_height


def scale_box(box: FaceBox, orig_w: int, orig_h: int) -> tuple[float, float, float, float] | None:
    """The box in original oriented pixels, clipped to the preview first; None if unusable."""
    f = scale_factors(box, orig_w, orig_h)
    if f is None:
        return None
    x1, x2 = sorted((box.x1, box.x2))
    y1, y2 = sorted((box.y1, box.y2))
    x1, x2 = (min(max(v, 0.0), float(box.image_width)) for v in (x1, x2))
    y1, y2 = (min(max(v, 0.0), float(box.image_height)) for v in (y1, y2))
    return x1 * f[0], y1 * f[1], x2 * f[0], y2 * f[1]


def face_short(box: FaceBox, orig_w: int, orig_h: int) -> float:
    """Short edge of the box in original pixels (0 when the box is unusable)."""
    b = scale_box(box, orig_w, orig_h)
    return 0.0 if b is None else min(b[2] - b[0], b[3] - b[1])


def edited_face_short(box: FaceBox) -> float:
    """Short edge of a box given in an edited asset's full-resolution frame (clipped to it)."""
    if box.image_width <= 0 or box.image_height <= 0:
        return 0.0
    x1, x2 = (min(max(v, 0.0), float(box.image_width)) for v in sorted((box.x1, box.x2)))
    y1, y2 = (min(max(v, 0.0), float(box.image_height)) for v in sorted((box.y1, box.y2)))
    return min(x2 - x1, y2 - y1)


def largest_face_short(boxes: Iterable[FaceBox], orig_w: int, orig_h: int, edited: bool = False) -> float:
    if edited:
        return max((edited_face_short(b) for b in boxes), default=0.0)
    return max((face_short(b, orig_w, orig_h) for b in boxes), default=0.0)
