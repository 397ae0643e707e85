"""Image decoding that survives real libraries.

* EXIF orientation is applied, so every coordinate lives in the *oriented* original
  pixel space.
* JPEGs are decoded at a reduced DCT scale (Pillow's ``draft``) when only a smaller copy
  is needed: a 12 MP photo is not fully decoded just to detect faces at 640 px.
* Every mode becomes 8-bit RGB: CMYK, 16-bit, RGBA/LA/P (alpha dropped), grayscale.
* Decompression bombs are refused from the header, before any pixel is decoded.
* HEIC/HEIF is read through pillow-heif.
* Every failure is an ``ImageLoadError``: a property of the bytes (undecodable, too large;
  ``transient`` False, safe to remember) or, as ``ImageReadError``, an I/O condition (file
  not found, permission denied, a read error, not a regular file, out of memory; ``transient``
  True, never remembered). No decoder exception escapes: PNG text-chunk bombs (zTXt/iTXt/iCCP
  past ``MAX_TEXT_CHUNK``, too many tEXt chunks) and any other parser error are "cannot
  decode" reasons. ``exc.path`` names the file.
* ``open_photo`` opens a file once (never blocking on a FIFO), hashes it, and hands the same
  open file to ``decode``, so what is decoded is exactly the bytes whose sha256 is known.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import math
import os
import stat
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

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
    """The file cannot be used as a photo; the message is the reason recorded.

    Raised as such it is a property of the bytes (the same bytes fail the same way on any
    machine, so the reason may be stored under their sha256).
    """

    transient = False

    def __init__(self, reason: str, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path = None if path is None else os.fspath(path)

    def describe(self) -> str:
        """The reason with the file named: for messages outside a per-file record."""
        return f"{self.path}: {self.reason}" if self.path else self.reason


class ImageReadError(ImageLoadError):
    """An I/O condition, not a property of the bytes: reported, never stored, retried next run."""

    transient = True


Source = str | os.PathLike[str] | BinaryIO


def _name(src: Source) -> str | None:
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    return getattr(src, "name", None) if isinstance(getattr(src, "name", None), str) else None


def _io_error(exc: OSError, src: Source, during: str = "open") -> ImageReadError:
    """An OSError carrying an errno: a condition of the file system, not of the bytes."""
    if exc.errno == errno.ENOENT:
        reason = "file not found"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        reason = "permission denied"
    else:
        reason = f"cannot {during}: {exc.strerror or exc}"
    return ImageReadError(reason, _name(src))


def _describe(exc: BaseException) -> str:
    msg = str(exc).strip()
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


@dataclass(frozen=True)
class ImageMeta:
    width: int  # oriented
    height: int  # oriented
    orientation: int
    capture_time: str | None  # ISO 8601, from EXIF DateTimeOriginal (or DateTime)
    format: str | None


@dataclass(frozen=True)
class Decoded:
    rgb: np.ndarray  # H x W x 3 uint8, oriented (H x W grey from decode(grey=True))
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


def _size(src: Source) -> int:
    if isinstance(src, (str, os.PathLike)):
        return Path(src).stat().st_size
    return os.fstat(src.fileno()).st_size


def _open(src: Source) -> Image.Image:
    """Image.open, every failure an ImageLoadError (the header parser runs here)."""
    name = _name(src)
    try:
        if not isinstance(src, (str, os.PathLike)):
            src.seek(0)
        return Image.open(src)
    except UnidentifiedImageError:
        try:
            size = _size(src)
        except OSError as exc:
            raise _io_error(exc, src) from None
        raise ImageLoadError("empty file" if size == 0 else "not a recognised image format", name) from None
    except OSError as exc:
        if exc.errno is not None:
            raise _io_error(exc, src) from None
        raise ImageLoadError(f"cannot open: {exc}", name) from None  # Pillow: a header that lies
    except MemoryError:
        raise ImageReadError("out of memory while reading the header", name) from None
    except Exception as exc:  # noqa: BLE001 - ValueError (PNG text-chunk bombs), SyntaxError, struct.error, ...
        raise ImageLoadError(f"cannot decode: {_describe(exc)}", name) from None


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


def read_meta(path: Source) -> ImageMeta:
    """Header-only read: oriented size, EXIF orientation and capture time."""
    with _open(path) as im:
        try:
            return _meta(im)
        except Exception as exc:  # noqa: BLE001 - a header Pillow accepted but cannot size
            raise ImageLoadError(f"cannot decode: {_describe(exc)}", _name(path)) from None


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
    path: Source,
    target_long_side: int | None = None,
    max_pixels: int = 250_000_000,
    grey: bool = False,
) -> Decoded:
    """Decode an image, oriented and as 8-bit RGB; ``path`` may be an open binary file.

    With ``target_long_side``, JPEGs decode at the smallest DCT scale whose long side is
    still >= the target (never smaller), other formats decode fully. With ``grey``, a
    colour (YCbCr) JPEG decodes its luma channel only (no chroma, no colour conversion) and
    an image whose pixels are grey (mode L) stays grey: ``rgb`` is then H x W; anything
    else still comes back RGB (H x W x 3). Raises only ``ImageLoadError``
    (``ImageReadError`` for I/O conditions).
    """
    name = _name(path)
    with _open(path) as im:
        try:
            return _decode_open(im, target_long_side, max_pixels, name, grey)
        except ImageLoadError:
            raise
        except OSError as exc:
            if exc.errno is not None:  # the disk, not the data
                raise _io_error(exc, path, "read") from None
            msg = str(exc)
            raise ImageLoadError("truncated or corrupt image data" + (f": {msg}" if msg else ""), name) from None
        except MemoryError:
            raise ImageReadError("out of memory while decoding", name) from None
        except Exception as exc:  # noqa: BLE001 - any decoder/converter error is a property of the bytes
            raise ImageLoadError(f"cannot decode: {_describe(exc)}", name) from None


def _decode_open(
    im: Image.Image, target_long_side: int | None, max_pixels: int, name: str | None, grey: bool = False
) -> Decoded:
    w0, h0 = im.size
    if w0 * h0 > max_pixels:  # from the header, before anything else touches the file
        raise ImageLoadError(f"image too large: {w0}x{h0} pixels exceeds max_pixels={max_pixels}", name)
    meta = _meta(im)
    mode = "L" if grey else "RGB"
    if target_long_side and im.format == "JPEG" and max(w0, h0) > target_long_side:
        r = target_long_side / max(w0, h0)
        im.draft(mode, (math.ceil(w0 * r), math.ceil(h0 * r)))
    elif grey and im.format == "JPEG":
        im.draft(mode, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        im.load()
    scale = w0 / im.size[0]
    rgb = im if grey and im.mode == "L" else _to_rgb(im)
    for op in _TRANSPOSE.get(meta.orientation, []):
        rgb = rgb.transpose(op)
    arr = np.asarray(rgb, dtype=np.uint8)
    if arr.ndim == 2 and grey and arr.size:
        return Decoded(rgb=np.ascontiguousarray(arr), scale=scale, meta=meta)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.size == 0:
        raise ImageLoadError(f"unsupported pixel layout {arr.shape}", name)
    return Decoded(rgb=np.ascontiguousarray(arr), scale=scale, meta=meta)


@dataclass(frozen=True)
class PhotoFile:
    """An open regular file and the sha256 of the bytes it held when opened."""

    path: str
    fh: BinaryIO
    sha256: str
    size: int
    stamp: tuple[int, int, int]  # size, mtime_ns, ctime_ns at open


def _stamp(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words (from ``st_mode``)."""
    for test, word in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return word
    return "not a regular file"


@contextlib.contextmanager
def open_photo(path: str | os.PathLike[str], chunk: int = 1 << 20) -> Iterator[PhotoFile]:
    """Open ``path`` once and hash it; decode the yielded ``fh``. Raises ImageReadError on I/O.

    ``O_NONBLOCK`` keeps a FIFO from blocking the open; anything but a regular file is
    refused from ``fstat``. ``unchanged`` tells whether the file was modified meanwhile.
    """
    name = os.fspath(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(name, flags)
    except OSError as exc:
        raise _io_error(exc, name) from None
    with os.fdopen(fd, "rb") as fh:
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ImageReadError(f"not a regular file ({file_kind(st.st_mode)})", name)
            h = hashlib.sha256()
            while block := fh.read(chunk):
                h.update(block)
            fh.seek(0)
        except OSError as exc:
            raise _io_error(exc, name, "read") from None
        yield PhotoFile(name, fh, h.hexdigest(), st.st_size, _stamp(st))


def unchanged(photo: PhotoFile) -> bool:
    """True while the open file still has the size, mtime and ctime it had when opened."""
    try:
        return _stamp(os.fstat(photo.fh.fileno())) == photo.stamp
    except OSError:
        return False
