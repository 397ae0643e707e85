"""Bad files never stop a run; every image gets exactly one record; EXIF orientation holds.

The corpus (tests/support/corpus.py) is built from insightface's sample group photo ``t1.jpg``
(six faces), which ships inside the installed ``insightface`` package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import ImageFile

from facesets import imageio, schema
from facesets.config import load_schema, validate
from facesets.embed import EmbedOptions, embed_listing, sidecar_paths
from facesets.listing import stage_source
from facesets.options import build
from facesets.store import FaceStore
from tests.support.corpus import (
    HUGE_SIDE_JPEG,
    HUGE_SIDE_PNG,
    SPACES_NAME,
    UNICODE_NAME,
    bomb_png_bytes,
    build_bad_corpus,
    build_permission_corpus,
    find_face_photo,
    heif_encoder,
    unlock,
)

REPO = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO / "work" / "models"
MODEL_FILES = ("face_detection_yunet_2023mar.onnx", "face_recognition_sface_2021dec.onnx")
STAGE_TIMEOUT_S = 60  # a symlink loop that is not cut would never finish


def _section(name: str) -> dict:
    return validate({}, load_schema("config")["properties"][name], "test")


def _within(seconds: float, fn, *args):
    """Run fn(*args) in a daemon thread; fail (instead of hanging) if it does not return in time."""
    out: dict = {}

    def target() -> None:
        try:
            out["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            out["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        pytest.fail(f"{getattr(fn, '__name__', fn)} did not finish within {seconds} s (hang?)")
    if "error" in out:
        raise out["error"]
    return out["value"]


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def face_photo() -> Path:
    p = find_face_photo()
    if p is None:
        pytest.skip("no face photo: insightface's data/images/t1.jpg is not installed and data/demo is absent")
    return p


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, face_photo) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("bad") / "library"
    return root, build_bad_corpus(root, face_photo)


@pytest.fixture(scope="module")
def analyzer():
    missing = [f for f in MODEL_FILES if not (MODEL_DIR / f).is_file()]
    if missing:
        pytest.skip(f"opencv models not in {MODEL_DIR} (missing {', '.join(missing)}); run `facesets fetch-models`")
    from facesets.analyzers import create_analyzer

    return create_analyzer("opencv", _section("embed"), model_dir=MODEL_DIR)


def _embed(listing: pd.DataFrame, analyzer, out: Path):
    opts = build(EmbedOptions, "embed", {"batch_images": 8, "workers": 2})
    faces_out = out / "faces.parquet"
    stats = embed_listing(listing, analyzer, FaceStore(out / "store", analyzer.model_id), opts, faces_out, True)
    images_out, _ = sidecar_paths(faces_out)
    return stats, schema.read_table(images_out), schema.read_table(faces_out)


@pytest.fixture(scope="module")
def run(corpus, analyzer, tmp_path_factory):
    """stage + embed over the whole corpus, as the workflow runs them."""
    root, _ = corpus
    out = tmp_path_factory.mktemp("bad_out")
    stage = _section("stage")
    listing = _within(
        STAGE_TIMEOUT_S, stage_source, "bad", root, stage["include"], stage["exclude"], out / "listing.parquet"
    )
    stats, images, faces = _embed(listing, analyzer, out)
    return {"root": root, "out": out, "listing": listing, "stats": stats, "images": images, "faces": faces}


def _records_by_file(images: pd.DataFrame, root: Path) -> dict[str, list[int]]:
    """relative name -> indices of the image records that list it (as path or alias)."""
    out: dict[str, list[int]] = {}
    for i, r in images.iterrows():
        for p in [r["path"], *(list(r["aliases"]) if r["aliases"] is not None else [])]:
            out.setdefault(os.path.relpath(p, root).replace(os.sep, "/"), []).append(i)
    return out


def _record(run, rel: str) -> pd.Series:
    idx = _records_by_file(run["images"], run["root"])[rel]
    assert len(idx) == 1, rel
    return run["images"].loc[idx[0]]


def _faces_of(run, rel: str) -> pd.DataFrame:
    sha = _record(run, rel)["sha256"]
    return run["faces"][run["faces"]["sha256"] == sha].sort_values("face_index").reset_index(drop=True)


# ---------------------------------------------------------------- decode, file by file

ERRORS = {
    "empty.jpg": r"^empty file$",
    "not_an_image.jpg": r"^not a recognised image format$",
    "truncated.jpg": r"^truncated or corrupt image data\b",
    "truncated_header.jpg": r"^cannot open: (?i:.*truncated)",  # Pillow gives up while parsing the header
    "huge_dims.png": rf"^image too large: {HUGE_SIDE_PNG}x{HUGE_SIDE_PNG} pixels exceeds max_pixels=",
    "huge_dims.jpg": rf"^image too large: {HUGE_SIDE_JPEG}x{HUGE_SIDE_JPEG} pixels exceeds max_pixels=",
    "truncated.heic": r"^cannot decode: ",
    "broken_link.jpg": r"^file not found$",
    "self_loop.jpg": r"^cannot open: Too many levels of symbolic links$",
}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_decode_error_reason(corpus, name):
    root, expected = corpus
    if name not in expected:
        pytest.skip(f"{name} not in this corpus: {heif_encoder()}")
    assert expected[name] == "error"
    with pytest.raises(imageio.ImageLoadError, match=ERRORS[name]):
        imageio.decode(root / name, target_long_side=640)


ODD_BUT_GOOD = [
    "cmyk.jpg",
    "gray.jpg",
    "gray16.png",
    "rgba.png",
    "palette.png",
    "palette_transparent.png",
    "rgb16.png",
    "float32.tif",
    "photo.webp",
    "photo.heic",
    "mislabelled.png",
    "garbage_exif.jpg",
    "bad_orientation.jpg",
]


def _gray_thumb(rgb: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.resize(rgb.astype(np.float32).mean(axis=2), (320, 221), interpolation=cv2.INTER_AREA)


@pytest.mark.parametrize("name", ODD_BUT_GOOD)
def test_decode_odd_modes_to_rgb8(corpus, face_photo, name):
    root, expected = corpus
    if name not in expected:
        pytest.skip(f"{name} not in this corpus: {heif_encoder()}")
    dec = imageio.decode(root / name)
    assert dec.rgb.dtype == np.uint8
    assert dec.rgb.ndim == 3 and dec.rgb.shape[2] == 3
    assert dec.rgb.shape[:2] == (dec.meta.height, dec.meta.width)
    assert dec.rgb.flags["C_CONTIGUOUS"]
    # The same picture came out: not inverted (CMYK), not black/white-clipped (16 bit), not scrambled.
    ref = _gray_thumb(imageio.decode(face_photo).rgb)
    got = _gray_thumb(dec.rgb)
    assert float(np.abs(got - ref).mean()) < 10.0
    assert float(np.corrcoef(got.ravel(), ref.ravel())[0, 1]) > 0.97


def test_heic_encoder_available():
    reason = heif_encoder()
    if reason:
        pytest.skip(f"HEIC cases not built: {reason}")


def test_huge_dimensions_refused_from_header(corpus, monkeypatch, tmp_path):
    root, _ = corpus
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png_bytes(6000))  # valid and complete: ~5 KB on disk, 36 M pixels decoded
    assert bomb.stat().st_size < 20_000
    loads: list[str] = []
    real_load = ImageFile.ImageFile.load

    def spy(self):
        loads.append(getattr(self, "filename", "?"))
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    t0 = time.monotonic()
    for path, limit in [
        (root / "huge_dims.png", 250_000_000),
        (root / "huge_dims.jpg", 250_000_000),
        (bomb, 1_000_000),
    ]:
        with pytest.raises(imageio.ImageLoadError, match=r"^image too large: \d+x\d+ pixels exceeds max_pixels="):
            imageio.decode(path, target_long_side=640, max_pixels=limit)
        meta = imageio.read_meta(path)  # the header read of the stage step: no pixels either
        assert meta.width * meta.height > limit
    assert loads == [], f"pixels were decoded before the size guard: {loads}"
    assert time.monotonic() - t0 < 2.0
    monkeypatch.undo()
    imageio.decode(bomb, max_pixels=6000 * 6000)  # at the limit it is allowed: the guard is not off by one


def test_max_pixels_boundary(face_photo):
    meta = imageio.read_meta(face_photo)
    n = meta.width * meta.height
    assert imageio.decode(face_photo, max_pixels=n).meta.width == meta.width
    with pytest.raises(imageio.ImageLoadError, match="too large"):
        imageio.decode(face_photo, max_pixels=n - 1)


def test_png_header_read_keeps_orientation_without_decoding(corpus, monkeypatch):
    root, _ = corpus
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("read_meta decoded pixels"))
    assert imageio.read_meta(root / "orient" / "upright.png").orientation == 1
    rot = imageio.read_meta(root / "orient" / "rot6.png")
    assert rot.orientation == 6
    assert (rot.width, rot.height) == (640, 443)  # oriented: stored 443 x 640


# ---------------------------------------------------------------- stage + embed, whole corpus


def test_every_file_gets_exactly_one_record(run, corpus):
    root, expected = corpus
    images, stats = run["images"], run["stats"]
    by_file = _records_by_file(images, root)

    unexpected = sorted(set(by_file) - set(expected))
    assert not unexpected, f"records for files the corpus does not know: {unexpected}"
    for rel, outcome in expected.items():
        idx = by_file.get(rel, [])
        if outcome == "absent":
            assert idx == [], f"{rel} should not be listed"
            continue
        assert len(idx) == 1, f"{rel}: {len(idx)} records"
        rec = images.loc[idx[0]]
        assert rec["status"] == outcome, f"{rel}: {rec['status']} ({rec['error']}), expected {outcome}"

    # one record per unique content, each file named once
    assert images["sha256"].dropna().is_unique
    assert images["path"].is_unique
    named = [p for _, r in images.iterrows() for p in [r["path"], *list(r["aliases"])]]
    assert len(named) == len(set(named))

    errors = images[images["status"] == "error"]
    assert errors["error"].map(lambda e: isinstance(e, str) and e.strip() != "").all()
    assert images.loc[images["status"] != "error", "error"].isna().all()
    assert stats.errors == len(errors) == sum(1 for v in expected.values() if v == "error")
    assert stats.noface == sum(1 for v in expected.values() if v == "noface")


def test_error_reasons_in_records(run, corpus):
    _, expected = corpus
    reasons = {
        "self_loop.jpg": "symlink loop",
        "ping.jpg": "symlink loop",
        "broken_link.jpg": "broken symlink",
        "empty.jpg": "empty file",
        "not_an_image.jpg": "not a recognised image format",
        "huge_dims.png": "image too large",
        "huge_dims.jpg": "image too large",
        "truncated.jpg": "truncated",
    }
    for rel, want in reasons.items():
        assert want in _record(run, rel)["error"], rel
    non_utf8 = [k for k in expected if "\\x" in k]
    for rel in non_utf8:
        assert "not valid UTF-8" in _record(run, rel)["error"]


def test_faces_found_in_every_odd_copy(run, corpus):
    _, expected = corpus
    n = len(_faces_of(run, "orient/upright.jpg"))
    assert n == 6  # t1.jpg: a group of six
    for rel, outcome in expected.items():
        if outcome == "faces":
            assert _record(run, rel)["n_faces"] == n, rel
            assert len(_faces_of(run, rel)) == n, rel


def test_symlink_loop_cut_without_duplicates(run):
    listing = run["listing"]
    named = list(listing["path"]) + [a for al in listing["aliases"] for a in al]
    assert not [p for p in named if "/loop/" in p or p.endswith("/loop")]
    assert _record(run, "a/inside.jpg")["aliases"].tolist() == []


def test_duplicates_and_links_become_aliases(run):
    rec = _record(run, "orient/upright.jpg")
    root = run["root"]
    assert sorted([rec["path"], *rec["aliases"]]) == sorted(
        str(root / p) for p in ("link_to_upright.jpg", "orient/upright.jpg", "orient/upright_dup.jpg")
    )


def test_rerun_reuses_every_record(run, analyzer):
    """Error and noface results are stored too: a second run analyzes nothing and agrees."""
    stats, images, _ = _embed(run["listing"], analyzer, run["out"])
    assert stats.analyzed == 0
    cols = ["path", "status", "error", "n_faces", "img_width", "img_height"]
    pd.testing.assert_frame_equal(images[cols], run["images"][cols])


# ---------------------------------------------------------------- EXIF orientation


@pytest.mark.parametrize(
    ("rotated", "upright", "size", "tol"),
    [
        ("orient/rot6.jpg", "orient/upright.jpg", (1280, 886), 3.0),
        ("orient/rot8.jpg", "orient/upright.jpg", (1280, 886), 3.0),
        ("orient/rot3.jpg", "orient/upright.jpg", (1280, 886), 3.0),
        ("orient/rot6.png", "orient/upright.png", (640, 443), 0.01),  # lossless: the detector sees the same pixels
        ("orient/rot6.heic", "photo.heic", (640, 443), 3.0),
    ],
)
def test_exif_orientation(run, corpus, rotated, upright, size, tol):
    _, expected = corpus
    if rotated not in expected:
        pytest.skip(f"{rotated} not in this corpus: {heif_encoder()}")
    rec = _record(run, rotated)
    assert (rec["img_width"], rec["img_height"]) == size  # oriented, not stored, size
    row = run["listing"][run["listing"]["sha256"] == rec["sha256"]].iloc[0]
    assert (row["width"], row["height"]) == size
    a, b = _faces_of(run, rotated), _faces_of(run, upright)
    assert len(a) == len(b) == 6
    box = ["x1", "y1", "x2", "y2"]
    assert np.abs(a[box].to_numpy() - b[box].to_numpy()).max() <= tol
    kps_a, kps_b = np.stack(a["kps"].to_list()), np.stack(b["kps"].to_list())
    assert np.abs(kps_a - kps_b).max() <= tol
    assert (a["x2"] <= size[0] + 0.5).all() and (a["y2"] <= size[1] + 0.5).all()


# ---------------------------------------------------------------- names


def test_unicode_and_space_names_survive(run):
    root = run["root"]
    for rel in (UNICODE_NAME, SPACES_NAME):
        want = str(root / rel)
        paths = set(run["faces"]["path"])
        assert want in paths, f"{want!r} not in the face table"
        assert want in set(run["images"]["path"])


# ---------------------------------------------------------------- permissions

_STAGE_AS_USER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from facesets import imageio
    from facesets.listing import stage_source
    root, out, include, exclude = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
    stage_source("perm", root, include, exclude, out / "listing.parquet")
    try:
        imageio.decode(root / "locked.jpg")
        reason = None
    except imageio.ImageLoadError as exc:
        reason = str(exc)
    print(json.dumps({"decode_locked": reason}))
    """
)


def _as_nobody(args: list[str], home: Path) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=home, timeout=120)


def test_unreadable_files_and_folders(face_photo, analyzer, tmp_path):
    """chmod 000 does not stop root, so as root the stage step runs as user 'nobody' (setpriv)."""
    stage = _section("stage")
    base = Path(tempfile.mkdtemp(prefix="facesets-perm-"))  # pytest's tmp root is 0700: nobody cannot enter
    try:
        os.chmod(base, 0o755)
        root, out = base / "library", base / "out"
        out.mkdir()
        os.chmod(out, 0o777)
        expected = build_permission_corpus(root, face_photo)
        if os.geteuid() == 0:
            if shutil.which("setpriv") is None:
                pytest.skip("running as root and setpriv is missing: cannot make a file unreadable")
            probe = _as_nobody(["-c", "import facesets.listing"], out)
            if probe.returncode != 0:
                pytest.skip(f"cannot run the stage step as user nobody here: {probe.stderr.strip()[-400:]}")
            proc = _as_nobody(
                ["-c", _STAGE_AS_USER, str(root), str(out), json.dumps(stage["include"]), json.dumps(stage["exclude"])],
                out,
            )
            assert proc.returncode == 0, proc.stderr
            decode_locked = json.loads(proc.stdout.strip().splitlines()[-1])["decode_locked"]
            listing = schema.read_table(out / "listing.parquet")
        else:
            listing = stage_source("perm", root, stage["include"], stage["exclude"], out / "listing.parquet")
            try:
                imageio.decode(root / "locked.jpg")
                decode_locked = None
            except imageio.ImageLoadError as exc:
                decode_locked = str(exc)
        assert decode_locked == "permission denied"

        _, images, faces = _embed(listing, analyzer, tmp_path)  # embed as ourselves, from the listing
        by_file = _records_by_file(images, root)
        for rel, outcome in expected.items():
            idx = by_file.get(rel, [])
            if outcome == "absent":
                assert idx == [], rel
                continue
            assert len(idx) == 1, rel
            rec = images.loc[idx[0]]
            assert rec["status"] == outcome, f"{rel}: {rec['status']} ({rec['error']})"
        assert set(by_file) == {k for k, v in expected.items() if v != "absent"}
        reason = {rel: images.loc[by_file[rel][0], "error"] for rel in by_file}
        assert reason["locked.jpg"] == "permission denied"
        assert reason["locked_dir"] == "cannot list folder: Permission denied"
        assert reason["noexec_dir/inside.jpg"] == "cannot stat: Permission denied"
        assert len(faces) == 6
    finally:
        unlock(base / "library")
        shutil.rmtree(base, ignore_errors=True)
