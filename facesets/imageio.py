"""Image decoding that survives real libraries.

* EXIF orientation is applied, so every coordinate lives in the *oriented* original
  pixel space.
* JPEGs are decoded at a reduced DCT scale (Pillow's ``draft``) when only a smaller copy
  is needed: a 12 MP photo is not fully decoded just to detect faces at 640 px.
* Every mode becomes 8-bit RGB: CMYK, 16-bit, RGBA/LA/P (alpha dropped), grayscale.
* Decompression bombs are refused from the header, before any pixel is decoded.
* HEIC/HEIF is read through pillow-heif.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, PngImagePlugin, UnidentifiedImageError

try:  # HEIC/HEIF support is optional at import time, required by pyproject.
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:  # pragma: no cover - pillow-heif is a declared dependency
    pillow_heif = None

ImageFile.LOAD_TRUNCATED_IMAGES = False
Image.MAX_IMAGE_PIXELS = None  # we apply our own, configurable limit before decoding

ORIENTATION_TAG = 0x0112
EXIF_IFD = 0x8769
DATETIME_ORIGINAL = 0x9003
DATETIME = 0x0132

_TRANSPOSE = {
    2: [Image.Transpose.FLIP_LEFT_RIGHT],
    3: [Image.Transpose.ROTATE_180],
    4: [Image.Transpose.FLIP_TOP_BOTTOM],
    5: [Image.Transpose.TRANSPOSE],
    6: [Image.Transpose.ROTATE_270],
    7: [Image.Transpose.TRANSVERSE],
    8: [Image.Transpose.ROTATE_90],
}


class ImageLoadError(Exception):
    """The file cannot be used as a photo; the message is the reason recorded."""


@dataclass(frozen=True)
class ImageMeta:
    width: int  # oriented
    height: int  # oriented
    orientation: int
    capture_time: str | None  # ISO 8601, from EXIF DateTimeOriginal (or DateTime)
    format: str | None


@dataclass(frozen=True)
class Decoded:
    rgb: np.ndarray  # H x W x 3 uint8, oriented
    scale: float  # original oriented pixels per decoded pixel (>= 1)
    meta: ImageMeta


def _oriented_size(w: int, h: int, orientation: int) -> tuple[int, int]:
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _capture_time(exif: Image.Exif) -> str | None:
    raw = None
    try:
        raw = exif.get_ifd(EXIF_IFD).get(DATETIME_ORIGINAL)
    except Exception:  # noqa: BLE001 - malformed EXIF must not fail the photo
        raw = None
    raw = raw or exif.get(DATETIME)
    if not isinstance(raw, str):
        return None
    try:
        return datetime.strptime(raw.strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S").isoformat()
    except ValueError:
        return None


def _open(path: str | os.PathLike[str]) -> Image.Image:
    try:
        return Image.open(path)
    except UnidentifiedImageError:
        size = Path(path).stat().st_size
        raise ImageLoadError("empty file" if size == 0 else "not a recognised image format") from None
    except PermissionError:
        raise ImageLoadError("permission denied") from None
    except FileNotFoundError:
        raise ImageLoadError("file not found") from None
    except OSError as exc:
        raise ImageLoadError(f"cannot open: {exc.strerror or exc}") from None


def _header_exif(im: Image.Image) -> Image.Exif:
    """EXIF from what the header holds, never decoding pixels.

    ``PngImageFile.getexif()`` decodes the whole image when no eXIf chunk came before the
    pixel data (to look for one after it), which would decode a decompression bomb before
    the size guard and make every PNG a full decode in ``read_meta``.
    """
    if isinstance(im, PngImagePlugin.PngImageFile) and "exif" not in im.info:
        return Image.Image.getexif(im)  # eXIf/XMP seen in the header only
    return im.getexif()


def _meta(im: Image.Image) -> ImageMeta:
    try:
        exif = _header_exif(im)
        orientation = int(exif.get(ORIENTATION_TAG, 1) or 1)
        capture = _capture_time(exif)
    except Exception:  # noqa: BLE001 - broken EXIF: treat as absent
        orientation, capture = 1, None
    if orientation not in range(1, 9):
        orientation = 1
    w, h = _oriented_size(*im.size, orientation)
    return ImageMeta(width=w, height=h, orientation=orientation, capture_time=capture, format=im.format)


def read_meta(path: str | os.PathLike[str]) -> ImageMeta:
    """Header-only read: oriented size, EXIF orientation and capture time."""
    with _open(path) as im:
        return _meta(im)


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr8 = np.clip(arr * (255.0 / hi), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        arr8 = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return im.convert("RGBA").convert("RGB")
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, P, 16-bit RGB modes


def decode(
    path: str | os.PathLike[str],
    target_long_side: int | None = None,
    max_pixels: int = 250_000_000,
) -> Decoded:
    """Decode an image, oriented and as 8-bit RGB.

    With ``target_long_side``, JPEGs decode at the smallest DCT scale whose long side is
    still >= the target (never smaller), other formats decode fully.
    """
    with _open(path) as im:
        w0, h0 = im.size
        if w0 * h0 > max_pixels:  # from the header, before anything else touches the file
            raise ImageLoadError(f"image too large: {w0}x{h0} pixels exceeds max_pixels={max_pixels}")
        meta = _meta(im)
        if target_long_side and im.format == "JPEG" and max(w0, h0) > target_long_side:
            r = target_long_side / max(w0, h0)
            im.draft("RGB", (math.ceil(w0 * r), math.ceil(h0 * r)))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                im.load()
        except OSError as exc:
            msg = str(exc)
            raise ImageLoadError("truncated or corrupt image data" + (f": {msg}" if msg else "")) from None
        except (ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise ImageLoadError(f"cannot decode: {exc}") from None
        scale = w0 / im.size[0]
        rgb = _to_rgb(im)
    for op in _TRANSPOSE.get(meta.orientation, []):
        rgb = rgb.transpose(op)
    arr = np.asarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.size == 0:
        raise ImageLoadError(f"unsupported pixel layout {arr.shape}")
    return Decoded(rgb=np.ascontiguousarray(arr), scale=scale, meta=meta)
