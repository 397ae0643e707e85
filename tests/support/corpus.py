"""A small corpus of awkward files, built from one real face photo.

``build_bad_corpus`` writes the files a real photo library throws at the pipeline and
returns ``{relative name: expected outcome}``; the outcome is ``faces``, ``noface`` or
``error`` (the image record's status) or ``absent`` (correctly not listed at all).
A relative name is '/'-separated; for a file whose name is not valid UTF-8 it is the
printable form the listing records (``\\xe9`` for the byte 0xE9).
"""

from __future__ import annotations

import importlib.util
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

ORIENTATION = 0x0112
LOSSLESS_LONG_SIDE = 640  # PNG/TIFF variants are written at this size to keep the corpus small
HUGE_SIDE_PNG = 60_000
HUGE_SIDE_JPEG = 65_000
UNICODE_NAME = "Ünïcödé 写真 photo.jpg"
SPACES_NAME = "with space/my photo 1.jpg"
NON_UTF8_NAME = b"latin1 caf\xe9.jpg"


def find_face_photo() -> Path | None:
    """A real photo of six faces: insightface's sample ``t1.jpg`` (ships with the package)."""
    spec = importlib.util.find_spec("insightface")
    if spec and spec.origin:
        p = Path(spec.origin).parent / "data" / "images" / "t1.jpg"
        if p.is_file():
            return p
    p = Path(__file__).resolve().parents[2] / "data" / "demo" / "photos" / "insightface" / "t1.jpg"
    return p if p.is_file() else None


def heif_encoder() -> str | None:
    """None when pillow-heif can write HEIC here, else why not."""
    try:
        import pillow_heif
    except ImportError as exc:
        return f"pillow-heif is not importable: {exc}"
    try:
        buf = io.BytesIO()
        pillow_heif.from_pillow(Image.new("RGB", (64, 64), (90, 120, 150))).save(buf, format="HEIF", quality=60)
        if not buf.getvalue():
            return "pillow-heif wrote an empty HEIC file"
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot encode here"
        info = getattr(pillow_heif, "libheif_info", lambda: {})()
        return f"pillow-heif cannot encode HEIC in this install ({type(exc).__name__}: {exc}; libheif {info})"
    return None


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png_bytes(width: int, height: int, rows: int = 4) -> bytes:
    """A PNG whose header declares width x height (1-bit gray) but holds only ``rows`` rows."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (1 + (width + 7) // 8) * rows, 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def bomb_png_bytes(side: int) -> bytes:
    """A complete, valid side x side 1-bit PNG of zeros: tiny on disk, side**2 bytes once decoded."""
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + (side + 7) // 8)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def huge_jpeg_bytes(jpeg: bytes, width: int, height: int) -> bytes:
    """A real JPEG whose SOF header is patched to declare width x height."""
    i = 2
    while i + 4 <= len(jpeg):
        if jpeg[i] != 0xFF:
            raise ValueError("not a JPEG marker stream")
        marker = jpeg[i + 1]
        seg_len = struct.unpack(">H", jpeg[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            out = bytearray(jpeg)
            out[i + 5 : i + 9] = struct.pack(">HH", height, width)
            return bytes(out)
        i += 2 + seg_len
    raise ValueError("no SOF marker found")


def _exif(orientation: int) -> bytes:
    ex = Image.Exif()
    ex[ORIENTATION] = orientation
    return ex.tobytes()


# Stored pixels for an EXIF orientation: applying the orientation to them gives the upright image.
_STORE_FOR = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,  # stored turned 90 deg counter-clockwise; viewer turns it clockwise
    8: Image.Transpose.ROTATE_270,
}


def build_bad_corpus(root: Path, face_photo: Path) -> dict[str, str]:
    """Write the corpus under ``root`` and return {relative name: expected outcome}."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    raw = face_photo.read_bytes()
    with Image.open(face_photo) as im0:
        im = im0.convert("RGB")
    small = im.copy()
    small.thumbnail((LOSSLESS_LONG_SIDE, LOSSLESS_LONG_SIDE), Image.Resampling.LANCZOS)
    expected: dict[str, str] = {}

    def put(rel: str, outcome: str, data: bytes | None = None) -> Path:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if data is not None:
            p.write_bytes(data)
        expected[rel] = outcome
        return p

    def save(rel: str, outcome: str, image: Image.Image, **kw) -> Path:
        p = put(rel, outcome)
        image.save(p, **kw)
        return p

    # -- unreadable as images: each must become an error record with its reason
    put("empty.jpg", "error", b"")
    put("truncated.jpg", "error", raw[: len(raw) // 2])
    put("truncated_header.jpg", "error", raw[:200])
    put("not_an_image.jpg", "error", b"This is a text file, not a photo.\n" * 20)
    put("huge_dims.png", "error", huge_png_bytes(HUGE_SIDE_PNG, HUGE_SIDE_PNG))
    put("huge_dims.jpg", "error", huge_jpeg_bytes(raw, HUGE_SIDE_JPEG, HUGE_SIDE_JPEG))

    # -- odd but valid encodings of the face photo: faces expected
    save("cmyk.jpg", "faces", im.convert("CMYK"), quality=92)
    save("gray.jpg", "faces", im.convert("L"), quality=92)
    gray16 = np.asarray(small.convert("L"), np.uint16) * 257
    save("gray16.png", "faces", Image.fromarray(gray16))
    rgba = small.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(small.size).point(lambda v: 64 + v * 3 // 4))
    save("rgba.png", "faces", rgba)
    save("palette.png", "faces", small.convert("P", palette=Image.Palette.ADAPTIVE, colors=256))
    pal_t = small.convert("P", palette=Image.Palette.ADAPTIVE, colors=255)
    pal_t.info["transparency"] = 0
    save("palette_transparent.png", "faces", pal_t, transparency=0)
    put("rgb16.png", "faces", _rgb16_png(small))
    save("float32.tif", "faces", Image.fromarray(np.asarray(small.convert("L"), np.float32)))
    save("photo.webp", "faces", small, quality=90)
    put("mislabelled.png", "faces", _jpeg(im, "mislabelled"))  # JPEG bytes behind a .png name
    put("UPPER CASE.JPEG", "faces", _jpeg(im, "upper"))
    exif_junk = b"Exif\x00\x00" + bytes(range(256)) * 4  # malformed EXIF must not sink the photo
    put("garbage_exif.jpg", "faces", _jpeg(im, "garbage exif", exif=exif_junk))
    put("bad_orientation.jpg", "faces", _jpeg(im, "bad orientation", exif=_exif(99)))

    # -- nothing to find
    save("blank.png", "noface", Image.new("RGB", (320, 240), (128, 128, 128)))
    save("tiny_1x1.png", "noface", Image.new("RGB", (1, 1), (200, 10, 10)))
    save("sliver_1x3000.png", "noface", Image.new("L", (1, 3000), 77))

    # -- names
    put(UNICODE_NAME, "faces", _jpeg(im, UNICODE_NAME))
    put(SPACES_NAME, "faces", _jpeg(im, SPACES_NAME))
    try:
        with open(os.path.join(os.fsencode(root), NON_UTF8_NAME), "wb") as fh:
            fh.write(_jpeg(im, "latin1"))
        expected[NON_UTF8_NAME.decode("utf-8", "backslashreplace")] = "error"  # cannot be stored as UTF-8
    except OSError:
        pass  # a filesystem that only takes UTF-8 names: nothing to test

    # -- EXIF orientation: the same picture stored turned, tagged to display upright
    put("orient/upright.jpg", "faces", raw)
    for o, op in _STORE_FOR.items():
        put(f"orient/rot{o}.jpg", "faces", _jpeg(im.transpose(op), f"rot{o}", exif=_exif(o), quality=95))
    save("orient/upright.png", "faces", small)
    save("orient/rot6.png", "faces", small.transpose(_STORE_FOR[6]), exif=_exif(6))

    # -- HEIC/HEIF (pillow-heif), also one written turned with an orientation tag
    if heif_encoder() is None:
        import pillow_heif

        pillow_heif.register_heif_opener()
        heic = save("photo.heic", "faces", small, format="HEIF", quality=85)
        save("orient/rot6.heic", "faces", small.transpose(_STORE_FOR[6]), format="HEIF", quality=85, exif=_exif(6))
        put("truncated.heic", "error", heic.read_bytes()[: heic.stat().st_size // 2])

    # -- duplicates and links to good files: listed as aliases of one record
    put("orient/upright_dup.jpg", "faces", raw)
    link = put("link_to_upright.jpg", "faces")
    os.symlink("orient/upright.jpg", link)

    # -- symlinks that go nowhere
    put("a/inside.jpg", "faces", _jpeg(im, "inside a"))
    os.symlink(".", root / "a" / "loop", target_is_directory=True)  # a/loop -> a
    expected["a/loop"] = "absent"
    os.symlink("self_loop.jpg", put("self_loop.jpg", "error"))  # self_loop.jpg -> itself
    os.symlink("ping.jpg", put("pong.jpg", "error"))  # pong -> ping -> pong
    os.symlink("pong.jpg", put("ping.jpg", "error"))
    os.symlink("does/not/exist.jpg", put("broken_link.jpg", "error"))

    # -- things that are not files to list
    (root / "folder.jpg").mkdir()  # a folder named like a photo
    expected["folder.jpg"] = "absent"
    put("notes.txt", "absent", b"not selected by the include globs\n")
    try:
        os.mkfifo(root / "pipe.jpg")  # reading it would block forever
        expected["pipe.jpg"] = "error"  # recorded: "not a regular file (a FIFO)" (#14.6)
    except (OSError, AttributeError):
        pass
    return expected


def build_permission_corpus(root: Path, face_photo: Path) -> dict[str, str]:
    """Files and folders a non-root reader cannot open; permissions are set last.

    Call ``unlock`` before deleting the tree as a non-root user.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    raw = face_photo.read_bytes()
    with Image.open(face_photo) as im0:
        im = im0.convert("RGB")
    (root / "readable.jpg").write_bytes(raw)
    (root / "locked.jpg").write_bytes(_jpeg(im, "locked"))
    (root / "locked_dir").mkdir()
    (root / "locked_dir" / "inside.jpg").write_bytes(_jpeg(im, "locked dir"))
    (root / "noexec_dir").mkdir()
    (root / "noexec_dir" / "inside.jpg").write_bytes(_jpeg(im, "noexec dir"))
    os.chmod(root / "locked.jpg", 0o000)
    os.chmod(root / "locked_dir", 0o000)
    os.chmod(root / "noexec_dir", 0o644)  # names can be listed, files cannot be reached
    return {
        "readable.jpg": "faces",
        "locked.jpg": "error",
        "locked_dir": "error",  # the folder itself is the record: it cannot be listed
        "locked_dir/inside.jpg": "absent",
        "noexec_dir/inside.jpg": "error",
    }


def unlock(root: Path) -> None:
    for p in (root / "locked.jpg", root / "locked_dir", root / "noexec_dir"):
        if p.exists() or p.is_symlink():
            os.chmod(p, 0o755)


def _jpeg(im: Image.Image, tag: str, quality: int = 90, exif: bytes | None = None) -> bytes:
    """JPEG bytes, unique per ``tag`` (a comment), so copies do not collapse into aliases."""
    buf = io.BytesIO()
    kw = {"exif": exif} if exif is not None else {}
    im.save(buf, format="JPEG", quality=quality, comment=tag.encode("utf-8"), **kw)
    return buf.getvalue()


def _rgb16_png(im: Image.Image) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one; OpenCV can)."""
    import cv2

    arr = np.asarray(im.convert("RGB"), np.uint16)[:, :, ::-1] * 257
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr))
    if not ok:
        raise RuntimeError("cv2 could not encode a 16-bit PNG")
    return buf.tobytes()
