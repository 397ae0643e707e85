"""Build a benchmark library of 12 MP JPEGs from the demo photos.

Every output file is a variant of one demo photo: a slightly jittered 4:3 crop,
upscaled to 4000x3000 (landscape sources) or 3000x4000 (portrait sources), re-encoded
at JPEG quality 85-95. About a quarter are stored rotated with an EXIF Orientation tag
(6, 8 or 3) such that the *displayed* (EXIF-applied) image is upright.

The build is deterministic (seeded; each file depends only on the seed, its index and
its source photo) and is skipped when the folder already holds a library built with
the same parameters (``library.json`` marker, written last).

    python benchmarks/build_library.py [--n 320] [--dest work/bench/library-12mp]
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import multiprocessing
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageOps

VERSION = 1  # bump when the recipe changes, so old libraries are rebuilt
MARKER = "library.json"
DEFAULT_PHOTOS = Path("data/demo/photos")
DEFAULT_DEST = Path("work/bench/library-12mp")
LONG, SHORT = 4000, 3000  # 12 MP
ORIENTATION_TAG = 0x0112
# What to do to the upright image so that a viewer applying the EXIF tag shows it upright.
_STORE_OP = {
    6: Image.Transpose.ROTATE_90,  # viewer rotates 90 deg clockwise (ROTATE_270)
    8: Image.Transpose.ROTATE_270,  # viewer rotates 90 deg counter-clockwise (ROTATE_90)
    3: Image.Transpose.ROTATE_180,
}
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png"}


@dataclass(frozen=True)
class Variant:
    index: int
    source: str
    out: str
    crop: float  # share of the largest 4:3 crop that is kept (0.85..1)
    fx: float  # crop position, 0..1 of the free room
    fy: float
    quality: int
    orientation: int  # 1 = stored upright, else 3/6/8


def source_photos(photos: Path) -> list[Path]:
    files = sorted(p for p in Path(photos).rglob("*") if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)
    if not files:
        raise SystemExit(f"no photos under {photos}; run: python -m facesets demo-photos data/demo")
    return files


def plan(photos: Path, dest: Path, n: int, seed: int, rotated_share: float = 0.25) -> list[Variant]:
    """The deterministic recipe for every output file."""
    sources = source_photos(photos)
    rng = random.Random(seed)
    order: list[Path] = []
    while len(order) < n:  # every source once per round, each round shuffled
        round_ = list(sources)
        rng.shuffle(round_)
        order.extend(round_)
    variants = []
    for i, src in enumerate(order[:n]):
        r = random.Random(f"{seed}:{i}:{src.name}")
        orientation = r.choice((6, 8, 3)) if r.random() < rotated_share else 1
        variants.append(
            Variant(
                index=i,
                source=str(src),
                out=str(Path(dest) / f"img-{i:04d}.jpg"),
                crop=round(r.uniform(0.85, 1.0), 4),
                fx=round(r.random(), 4),
                fy=round(r.random(), 4),
                quality=r.randint(85, 95),
                orientation=orientation,
            )
        )
    return variants


def make_variant(v: Variant, size: tuple[int, int] = (LONG, SHORT)) -> str:
    """Write one JPEG (12 MP unless ``size`` = (long, short) edge says otherwise); returns its path."""
    with Image.open(v.source) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
    w, h = im.size
    landscape = w >= h
    tw, th = size if landscape else size[::-1]
    aspect = tw / th
    # Largest crop of the target aspect, shrunk by the jitter factor, placed by fx/fy.
    cw, ch = (w, w / aspect) if w / h < aspect else (h * aspect, h)
    cw, ch = cw * v.crop, ch * v.crop
    x0 = (w - cw) * v.fx
    y0 = (h - ch) * v.fy
    up = im.resize((tw, th), Image.Resampling.BICUBIC, box=(x0, y0, x0 + cw, y0 + ch))
    exif = Image.Exif()
    if v.orientation != 1:
        up = up.transpose(_STORE_OP[v.orientation])
        exif[ORIENTATION_TAG] = v.orientation
    tmp = v.out + ".tmp"
    up.save(tmp, "JPEG", quality=v.quality, exif=exif.tobytes())
    os.replace(tmp, v.out)
    return v.out


def _params(photos: Path, n: int, seed: int, size: tuple[int, int] = (LONG, SHORT)) -> dict:
    names = hashlib.sha256()
    for p in source_photos(photos):
        names.update(f"{p.relative_to(photos)}\0{p.stat().st_size}\n".encode())
    return {
        "version": VERSION,
        "n": n,
        "seed": seed,
        "size": list(size),
        "photos": str(photos),
        "photos_fingerprint": names.hexdigest()[:16],
    }


def is_built(dest: Path, params: dict) -> bool:
    marker = Path(dest) / MARKER
    if not marker.exists():
        return False
    try:
        saved = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if saved.get("params") != params:
        return False
    return all((Path(dest) / f).is_file() for f in saved.get("files", []))


def build_library(
    photos: Path = DEFAULT_PHOTOS,
    dest: Path = DEFAULT_DEST,
    n: int = 320,
    seed: int = 12,
    procs: int = 2,
    force: bool = False,
    size: tuple[int, int] = (LONG, SHORT),
) -> list[Path]:
    """Build (or reuse) the library; returns the sorted list of its JPEGs."""
    photos, dest = Path(photos), Path(dest)
    params = _params(photos, n, seed, size)
    marker = dest / MARKER
    if not force and is_built(dest, params):
        files = json.loads(marker.read_text())["files"]
        print(f"library: reusing {len(files)} files in {dest}", file=sys.stderr)
        return [dest / f for f in files]
    dest.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    for old in dest.glob("img-*.jpg*"):
        old.unlink()
    variants = plan(photos, dest, n, seed)
    t0 = time.monotonic()
    with multiprocessing.get_context("spawn").Pool(max(1, procs)) as pool:
        for k, _ in enumerate(pool.imap_unordered(functools.partial(make_variant, size=size), variants, chunksize=4), 1):
            if k % 40 == 0 or k == n:
                print(f"library: {k}/{n} built ({time.monotonic() - t0:.0f} s)", file=sys.stderr)
    files = sorted(Path(v.out).name for v in variants)
    rotated = sum(v.orientation != 1 for v in variants)
    info = {
        "params": params,
        "files": files,
        "rotated": rotated,
        "variants": [asdict(v) for v in variants],
        "build_seconds": round(time.monotonic() - t0, 1),
    }
    tmp = marker.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=1))
    os.replace(tmp, marker)
    print(f"library: {n} files ({rotated} EXIF-rotated) in {dest}", file=sys.stderr)
    return [dest / f for f in files]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    ap.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    ap.add_argument("--n", type=int, default=320)
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--force", action="store_true", help="rebuild even if the marker matches")
    args = ap.parse_args(argv)
    build_library(args.photos, args.dest, args.n, args.seed, args.procs, args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
