"""Unit tests of the Immich source: path safety, box scaling, response parsing, config checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from facesets.config import ConfigError, load_workflow_config
from facesets.immich.client import normalize_base_url, retry_after_seconds
from facesets.immich.geometry import FaceBox, face_short, largest_face_short, oriented_size, scale_box
from facesets.immich.models import ResponseShapeError, parse_asset, parse_faces, parse_search_page
from facesets.immich.paths import (
    MAX_COMPONENT_BYTES,
    MAX_PATH_BYTES,
    PathClaims,
    UnsafePathError,
    path_under,
    safe_relpath,
)
from tests.support.fake_immich import HOSTILE_PATHS

HOSTILE = [
    *HOSTILE_PATHS,
    "../x.jpg",
    "..\\..\\x.jpg",
    "/etc/passwd",
    "C:\\Windows\\System32\\x.jpg",
    "C:x.jpg",
    "\\\\?\\C:\\x.jpg",
    "\\\\server\\share\\x.jpg",
    "a/\x00/../b.jpg",
    "a/" + "é" * 300 + ".jpeg",
    "/".join(["a"] * 1000),
    "   ",
    "...",
    "a/./b/./../../../c.jpg",
    "COM1.txt",
    "lpt9",
    "photos/file.jpg:ads",
    "photos/\udcff-bad-surrogate.jpg",
]


@pytest.mark.parametrize("original", HOSTILE)
def test_safe_relpath_never_escapes(original, tmp_path):
    rel = safe_relpath(original, "fallback.jpg")
    parts = rel.split("/")
    assert rel and not rel.startswith("/") and "\\" not in rel and "\x00" not in rel
    assert all(p not in ("", ".", "..") for p in parts)
    assert all(":" not in p and not p.startswith(".") for p in parts)
    assert all(len(p.encode("utf-8")) <= MAX_COMPONENT_BYTES for p in parts)
    assert len(rel.encode("utf-8")) <= MAX_PATH_BYTES + 40
    root = tmp_path / "files"
    root.mkdir()
    target = path_under(root, rel)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"x")  # the filesystem accepts it
    assert root.resolve() in target.resolve().parents


def test_safe_relpath_is_readable_and_deterministic():
    assert safe_relpath("/mnt/nas/photos/2020/IMG_0001.JPG") == "mnt/nas/photos/2020/IMG_0001.JPG"
    assert safe_relpath("C:\\Users\\me\\Pictures\\a.jpg") == "Users/me/Pictures/a.jpg"
    assert safe_relpath("../../etc/x.jpg") == "etc/x.jpg"
    assert safe_relpath("photos/CON.jpg") == "photos/_CON.jpg"
    assert safe_relpath("", "IMG_1.jpg") == "IMG_1.jpg"
    long = "a/" + "x" * 400 + ".jpg"
    assert safe_relpath(long) == safe_relpath(long) and safe_relpath(long).endswith(".jpg")
    assert safe_relpath(long) != safe_relpath("a/" + "x" * 401 + ".jpg")  # truncation keeps names unique


def test_path_under_refuses_escapes_and_symlinks(tmp_path):
    root = tmp_path / "files"
    root.mkdir()
    for bad in ("../x", "/abs", "a/../../x", "", "a//b", "C:/x", "a/\x00"):
        with pytest.raises(UnsafePathError):
            path_under(root, bad)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, root / "link")
    with pytest.raises(UnsafePathError):
        path_under(root, "link/x.jpg")


def test_path_claims_disambiguate_case_and_file_folder_clashes():
    claims = PathClaims(["photos/Case.JPG"])
    a = claims.claim("photos/case.jpg", "11111111-2222-4333-8444-555555555555")
    assert a == "photos/case~11111111.jpg"
    b = claims.claim("photos/Case.JPG/inner.jpg", "22222222-2222-4333-8444-555555555555")
    assert b != "photos/Case.JPG/inner.jpg"  # would need a folder where a file is
    c = claims.claim("photos", "33333333-2222-4333-8444-555555555555")
    assert c == "photos~33333333"  # would be a file where a folder is
    assert claims.claim("other/x.jpg", "44444444-2222-4333-8444-555555555555") == "other/x.jpg"


# -- geometry ------------------------------------------------------------------------------


def test_box_scaled_from_preview_to_original():
    box = FaceBox(100, 50, 190, 170, 720, 540)  # preview of a 2880x2160 original: factor 4
    assert scale_box(box, 2880, 2160) == (400.0, 200.0, 760.0, 680.0)
    assert face_short(box, 2880, 2160) == 360.0
    small = FaceBox(10, 10, 30, 40, 1440, 1080)  # 20 px in the preview, 40 px in a 2880 original
    assert face_short(small, 2880, 2160) == 40.0
    assert largest_face_short([small, box], 2880, 2160) == 360.0
    assert largest_face_short([], 2880, 2160) == 0.0


def test_box_scaling_follows_the_preview_orientation():
    # a portrait preview (oriented); the original's size given unrotated by a buggy server
    box = FaceBox(0, 0, 100, 200, 540, 720)
    assert scale_box(box, 2160, 2880) == scale_box(box, 2880, 2160) == (0.0, 0.0, 400.0, 800.0)
    # inverted and out-of-range coordinates are normalised and clipped to the preview
    assert scale_box(FaceBox(120, 90, -10, 10, 100, 100), 200, 200) == (0.0, 20.0, 200.0, 180.0)
    assert scale_box(FaceBox(0, 0, 10, 10, 0, 0), 100, 100) is None


def test_oriented_size():
    assert oriented_size(4000, 3000) == (4000, 3000)
    assert oriented_size(None, None, 4000, 3000, "6") == (3000, 4000)
    assert oriented_size(None, None, 4000, 3000, "1") == (4000, 3000)
    assert oriented_size(0, 0, 4000, 3000, None) == (4000, 3000)
    assert oriented_size(None, None, None, None) is None


# -- parsing (v2.7 and v3 shapes) ----------------------------------------------------------


def _asset(**over):
    a = {
        "id": "0b8b3c57-5a0e-4c0e-9d51-2f2b4b5c6d7e",
        "checksum": "qUqP5cyxm6YcTAhz05Hph5gvu9M=",
        "originalPath": "/x/a.jpg",
        "originalFileName": "a.jpg",
        "type": "IMAGE",
        "width": 4000,
        "height": 3000,
        "isTrashed": False,
        "isOffline": False,
        "visibility": "timeline",
        "ownerId": "0b8b3c57-5a0e-4c0e-9d51-2f2b4b5c6d7f",
    }
    a.update(over)
    return a


def test_parse_asset_v3_and_v27_shapes():
    v3 = parse_asset(_asset(duration=None))
    v27 = parse_asset(_asset(duration="0:00:00.00000", people=[{"id": "p", "faces": [{}]}], unassignedFaces=[{}]))
    assert v3 == v27 and (v3.width, v3.height) == (4000, 3000)
    no_size = parse_asset(_asset(width=None, height=None))
    assert no_size.width is None
    with_exif = parse_asset(
        _asset(width=None, height=None, exifInfo={"exifImageWidth": 4000, "exifImageHeight": 3000, "orientation": "8"})
    )
    assert (with_exif.width, with_exif.height) == (3000, 4000)
    with pytest.raises(ResponseShapeError, match="checksum"):
        parse_asset(_asset(checksum=None))


def test_parse_search_page_and_faces():
    page = parse_search_page({"albums": {}, "assets": {"items": [_asset()], "nextPage": "2", "total": 1}})
    assert page.next_page == 2 and len(page.assets) == 1
    assert parse_search_page({"assets": {"items": [], "nextPage": None}}).next_page is None
    with pytest.raises(ResponseShapeError):
        parse_search_page({"assets": {"items": [], "nextPage": "abc"}})
    faces = parse_faces(
        [
            {
                "boundingBoxX1": 1,
                "boundingBoxY1": 2,
                "boundingBoxX2": 30,
                "boundingBoxY2": 40,
                "imageWidth": 720,
                "imageHeight": 540,
                "person": None,
            }
        ]
    )
    assert faces == [FaceBox(1, 2, 30, 40, 720, 540)]
    with pytest.raises(ResponseShapeError):
        parse_faces([{"boundingBoxX1": 1}])


def test_retry_after_and_url():
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412475.0) == 5.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None
    assert normalize_base_url("https://photos.example.com/api/") == "https://photos.example.com"
    assert normalize_base_url("http://h:2283") == "http://h:2283"
    for bad in ("photos.example.com", "ftp://h", "https://user:secret@h"):
        with pytest.raises(ValueError) as exc:
            normalize_base_url(bad)
        assert "secret" not in str(exc.value)


# -- config --------------------------------------------------------------------------------


def _config(tmp_path: Path, source_yaml: str) -> dict:
    src = tmp_path / "s.yaml"
    src.write_text(source_yaml)
    return {"work_root": str(tmp_path / "work"), "sources": [str(src)]}


def test_config_kind_immich_needs_no_path(tmp_path):
    cfg = load_workflow_config(
        _config(tmp_path, "name: fam\nkind: immich\nimmich: {url_env: IMMICH_URL, api_key_env: [K_A, K_B]}\n")
    )
    s = cfg.source("fam")
    assert s.kind == "immich" and s.root == tmp_path / "work" / "immich" / "fam" / "files"
    assert s.immich["workers"] == 8 and s.immich["min_face_short"] == 90
    assert s.immich["visibility"] == ["timeline", "archive"]
    assert "**/thumbs/**" in s.exclude and "**/encoded-video/**" in s.exclude and "**/@eaDir/**" in s.exclude
    with pytest.raises(ConfigError, match="immich"):
        load_workflow_config(_config(tmp_path, "name: fam\nkind: immich\n"))
    with pytest.raises(ConfigError):
        load_workflow_config(
            _config(tmp_path, "name: fam\nkind: immich\npath: /x\nimmich: {url_env: U, api_key_env: K}\n")
        )
    with pytest.raises(ConfigError, match="path"):
        load_workflow_config(_config(tmp_path, "name: f\nkind: folder\n"))


def test_config_never_echoes_a_pasted_key(tmp_path):
    secret = "Zq8xV3kPp2LrT9mWc4NbY7sHd1GfJ6aE5uR0oIiK"
    for y in (
        f"immich: {{url_env: IMMICH_URL, api_key_env: {secret}}}",
        f"immich: {{url_env: 'https://h/?k={secret}', api_key_env: K}}",
        f"immich: {{url_env: U, api_key_env: [K, {secret}]}}",
    ):
        with pytest.raises(ConfigError) as exc:
            load_workflow_config(_config(tmp_path, f"name: fam\nkind: immich\n{y}\n"))
        assert secret not in str(exc.value) and "NAME of an environment variable" in str(exc.value)


def test_resolve_env_names_the_variable_only():
    from facesets.immich.settings import resolve_env

    block = {"url_env": "IMMICH_URL", "api_key_env": ["KEY_A", "KEY_B"], "ca_bundle": None}
    with pytest.raises(ConfigError, match="KEY_B"):
        resolve_env(block, "src", {"IMMICH_URL": "http://h", "KEY_A": "secret-a"})
    r = resolve_env(block, "src", {"IMMICH_URL": "http://h", "KEY_A": "secret-a", "KEY_B": "secret-b"})
    assert [n for n, _ in r.keys] == ["KEY_A", "KEY_B"]
    assert "secret" not in repr(r)
