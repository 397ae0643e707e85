"""roop-unleashed bundles: layout, reproducibility, what roop would load."""

import io
import zipfile

import cv2
import numpy as np
import pytest

from facesets.crops import encode_png
from facesets.fsz import layout_problems, roop_entries, write_fsz, write_fsz_from_files


def _png(seed: int, size: int = 32) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_png(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def test_flat_numbered_png_entries_stored_uncompressed(tmp_path):
    pngs = [_png(i) for i in range(12)]
    path = tmp_path / "set_all.fsz"
    write_fsz(path, pngs)
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        assert [i.filename for i in infos] == [f"{i}.png" for i in range(12)]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
        assert [zf.read(f"{i}.png") for i in range(12)] == pngs
    assert layout_problems(path) == []
    assert not list(tmp_path.glob(".tmp-*"))  # atomic: no temp file left behind


def test_same_crops_give_identical_bytes(tmp_path):
    pngs = [_png(i) for i in range(3)]
    write_fsz(tmp_path / "a.fsz", pngs)
    write_fsz(tmp_path / "b.fsz", pngs)
    assert (tmp_path / "a.fsz").read_bytes() == (tmp_path / "b.fsz").read_bytes()


def test_from_files_and_decoding_as_8bit_bgr(tmp_path):
    files = []
    for i in range(2):
        f = tmp_path / f"c{i}.png"
        f.write_bytes(_png(i, 64))
        files.append(f)
    write_fsz_from_files(tmp_path / "x.fsz", files)
    with zipfile.ZipFile(tmp_path / "x.fsz") as zf:
        img = cv2.imdecode(np.frombuffer(zf.read("1.png"), np.uint8), cv2.IMREAD_UNCHANGED)
    assert img.dtype == np.uint8 and img.shape == (64, 64, 3)


def test_refuses_non_png_data(tmp_path):
    with pytest.raises(ValueError, match="not PNG"):
        write_fsz(tmp_path / "bad.fsz", [b"\xff\xd8\xff\xe0 jpeg"])
    assert not (tmp_path / "bad.fsz").exists()


def test_roop_entry_filter_matches_the_contract():
    names = ["0.png", "1.PNG", "2.jpg", "sub/3.png", "4.png", "x.webp", "sub\\5.png"]
    assert roop_entries(names) == ["0.png", "4.png"]


@pytest.mark.parametrize(
    "entries,problem",
    [
        ({"0.png": None, "dir/1.png": None}, "not N.png"),
        ({"0.PNG": None}, "not N.png"),
        ({"0.png": None, "2.png": None}, "without gaps"),
        ({"0.png": b"not a png"}, "not PNG data"),
        ({}, "no entries"),
    ],
)
def test_layout_problems_are_reported(tmp_path, entries, problem):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data if data is not None else _png(0))
    path = tmp_path / "b.fsz"
    path.write_bytes(buf.getvalue())
    assert any(problem in p for p in layout_problems(path))


def test_not_a_zip(tmp_path):
    path = tmp_path / "z.fsz"
    path.write_bytes(b"hello")
    assert layout_problems(path)[0].startswith("not a ZIP")
