"""The `cluster` stage: folders, manifest, aliases, link modes, and correctness on real photos."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from facesets import thresholds
from facesets.embed import EmbedOptions, embed_listing
from facesets.listing import stage_source
from facesets.metrics import pairwise_prf
from facesets.options import build
from facesets.rawclusters import safe_name
from facesets.store import FaceStore


def test_safe_name_flattens_and_bounds():
    assert safe_name("/mnt/nas/2020/a b.jpg") == "mnt__nas__2020__a b.jpg"
    assert safe_name("src/we?ird:na<me>.jpg") == "src__we_ird_na_me_.jpg"
    assert safe_name("src/Ünïcödé 写真.jpg") == "src__Ünïcödé 写真.jpg"
    long = safe_name("src/" + "x" * 400 + ".jpg")
    assert len(long.encode()) <= 200 and long.endswith(".jpg")
    assert long != safe_name("src/" + "y" + "x" * 399 + ".jpg")


def test_threshold_profiles():
    assert thresholds.for_model("insightface-buffalo_l-abc").cluster == 0.55
    assert thresholds.for_model("opencv-yunet-sface-123").cluster == thresholds.SFACE.cluster
    with pytest.raises(ValueError, match="no threshold profile"):
        thresholds.for_model("mystery-model")


def _face_table(root, tmp, analyzer):
    listing = stage_source("dev", root, ["**/*.jpg", "**/*.jpeg", "**/*.png"], [], tmp / "listing.parquet")
    out = tmp / "faces.parquet"
    embed_listing(
        listing, analyzer, FaceStore(tmp / "store", analyzer.model_id), build(EmbedOptions, "embed"), out, True
    )
    return out


def _cluster(cache, out, *extra):
    proc = subprocess.run(
        [sys.executable, "-m", "facesets", "cluster", str(cache), str(out), *extra], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), json.loads((out / "manifest.json").read_text())


@pytest.mark.slow
def test_dev_faces_precision_one_recall_high(dev_faces, tmp_path, opencv_analyzer):
    cache = _face_table(dev_faces, tmp_path, opencv_analyzer)
    summary, manifest = _cluster(cache, tmp_path / "raw")
    assert summary["threshold"] == thresholds.SFACE.cluster
    labels = pd.read_csv(dev_faces / "labels.csv")
    truth, pred = [], []
    for row in labels.itertuples():
        names = row.faces_left_to_right.split(";")
        path = str(dev_faces / row.path)
        faces = [f for f in manifest["faces"] if path == f["path"] and f["det_score"] >= 0.8]
        # aliases share the canonical photo's faces: count them once, under the canonical path
        for f, name in zip(sorted(faces, key=lambda f: f["bbox"][0]), names, strict=False):
            if name != "bystander":
                truth.append(name)
                pred.append(f["cluster"] if f["cluster"] != "_singletons" else f["face_key"])
    p, r, _ = pairwise_prf(np.array(truth), np.array(pred))
    assert len(truth) >= 35
    assert p == 1.0 and r >= 0.9, (p, r)


@pytest.mark.slow
def test_folders_aliases_and_link_modes(dev_faces, tmp_path, opencv_analyzer):
    cache = _face_table(dev_faces, tmp_path, opencv_analyzer)
    for mode in ("hardlink", "symlink", "copy"):
        out = tmp_path / f"raw-{mode}"
        _, manifest = _cluster(cache, out, "--link-mode", mode)
        persons = sorted(p.name for p in out.iterdir() if p.name.startswith("person_"))
        assert persons == [f"person_{i:03d}" for i in range(1, len(persons) + 1)]
        sizes = [c["faces"] for c in manifest["clusters"] if c["name"].startswith("person_")]
        assert sizes == sorted(sizes, reverse=True)  # largest first
        obama = next(f for f in manifest["faces"] if f["path"].endswith("misc/obama.jpg"))
        folder = out / obama["cluster"]
        names = {p.name for p in folder.iterdir()}
        for p in [obama["path"], *obama["aliases"]]:  # every on-disk copy materialised
            rel = os.path.relpath(p, dev_faces)
            assert safe_name("dev/" + rel) in names
        one = folder / safe_name("dev/misc/obama.jpg")
        if mode == "symlink":
            assert one.is_symlink() and os.readlink(one) == obama["path"]
        else:
            assert not one.is_symlink() and one.read_bytes() == Path(obama["path"]).read_bytes()
        if mode == "copy":
            assert one.stat().st_ino != os.stat(obama["path"]).st_ino
        # every face listed once, with bbox and cluster
        keys = [f["face_key"] for f in manifest["faces"]]
        assert len(keys) == len(set(keys)) and all(len(f["bbox"]) == 4 for f in manifest["faces"])


@pytest.mark.slow
def test_group_photo_faces_land_in_different_clusters_and_rerun_is_identical(demo_photos, tmp_path, opencv_analyzer):
    import shutil

    lib = tmp_path / "lib"
    lib.mkdir()
    for i in range(3):  # the same six people three times, re-encoded: each person should cluster
        from PIL import Image

        Image.open(demo_photos / "insightface" / "t1.jpg").save(lib / f"t1_{i}.jpg", quality=90 - 5 * i)
    shutil.copy(demo_photos / "insightface" / "t1.jpg", lib / "t1_orig.jpg")
    cache = _face_table(lib, tmp_path, opencv_analyzer)
    summary, manifest = _cluster(cache, tmp_path / "raw")
    assert summary["clusters"] == 6
    for c in manifest["clusters"]:
        assert c["faces"] == c["photos"] == 4  # one face per photo in each person
    again = _cluster(cache, tmp_path / "raw")[1]
    assert again["faces"] == manifest["faces"]
