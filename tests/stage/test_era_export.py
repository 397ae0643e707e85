"""``era-split --export`` on real photos (../shared/datasets/dev-faces): Obama's photos with EXIF
years written into copies, embedded by the opencv backend, split and exported like face sets.
Each era gets crops of the member face only (the group photo's crop is Obama, not Biden),
bundles, its ``<era>.txt``; thin eras get THIN.txt. Skipped when the dataset is absent."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from facesets import schema
from facesets.cli import main
from facesets.embed import EmbedOptions, embed_listing
from facesets.fsz import layout_problems
from facesets.listing import stage_source
from facesets.options import build
from facesets.store import FaceStore

pytestmark = pytest.mark.slow

# photo -> (year written into its EXIF, Obama's face index left to right: labels.csv)
PHOTOS = {
    "misc/obama.jpg": (2008, 0),
    "misc/obama2.jpg": (2008, 0),
    "test/obama1.jpg": (2009, 0),
    "tests_images/obama3.jpg": (2009, 0),
    "misc/obama-720p.jpg": (2016, 0),
    "misc/two_people.jpg": (2016, 0),
    "test/obama_and_biden.jpg": (2016, 1),
}


def _with_year(src: Path, dest: Path, year: int) -> None:
    import piexif

    shutil.copy(src, dest)
    stamp = f"{year}:05:01 10:00:00".encode()
    piexif.insert(
        piexif.dump({"0th": {}, "Exif": {piexif.ExifIFD.DateTimeOriginal: stamp}, "1st": {}, "GPS": {}}), str(dest)
    )


def test_era_split_exports_each_era_like_a_faceset(dev_faces, opencv_analyzer, model_dir, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for rel, (year, _) in PHOTOS.items():
        _with_year(dev_faces / rel, photos / rel.replace("/", "__"), year)
    listing = stage_source("obama", photos, ["*.jpg"], [], tmp_path / "listing.parquet")
    table = tmp_path / "faces.parquet"
    store = FaceStore(tmp_path / "store", opencv_analyzer.model_id)
    embed_listing(listing, opencv_analyzer, store, build(EmbedOptions, "embed", {"workers": 2}), table, True)
    faces = schema.read_table(table)
    obama = {
        schema.face_key(faces[faces.path == str(photos / rel.replace("/", "__"))].sha256.iloc[0], i)
        for rel, (_, i) in PHOTOS.items()
    }
    assert obama <= set(faces.face_key)
    # the curated identity: the centroid of the Obama faces, as a refine manifest would hold it
    emb = np.stack(faces.set_index("face_key").loc[sorted(obama), "embedding"].to_numpy())
    cent = emb.sum(0) / np.linalg.norm(emb.sum(0))
    manifest = tmp_path / "refine_manifest.json"
    manifest.write_text(
        json.dumps(
            {"model_id": opencv_analyzer.model_id, "facesets": [{"name": "faceset_001", "centroid": cent.tolist()}]}
        )
    )

    for min_era_faces in (3, 8):  # one substantive era; then the same era as THIN (7 faces < 8)
        out = tmp_path / f"eras{min_era_faces}"
        rc = main(
            ["era-split", str(out), "--centroid-from", f"{manifest}#faceset_001", "--identity", "obama",
             "--faces", str(table), "--exif-cache", str(tmp_path / "years"), "--min-era-faces", str(min_era_faces),
             "--eras-settings", json.dumps({"min_short": 0, "attach": 0.6}),
             "--export", "--model-dir", str(model_dir), "--export-settings", json.dumps({"min_face_short": 0}),
             "--crop-cache", str(tmp_path / "crops")]
        )  # fmt: skip
        assert rc == 0
        split = json.loads((out / "eras_manifest.json").read_text())
        members = {m["face_key"] for e in split["eras"] for m in e["members"]}
        assert members == obama  # every Obama face, one per photo, no Biden, no bystander
        assert {(e["dominant_year"], e["thin"]) for e in split["eras"]} <= {(2008, False), (2008, True), (2009, False),
                                                                           (2009, True), (2016, False), (2016, True)}  # fmt: skip
        exp = json.loads((out / "manifest.json").read_text())
        assert exp["source"] == "eras:obama" and exp["identity"] == "obama"
        exported = {e["name"]: e for e in exp["facesets"]}
        assert set(exported) | set(exp["stats"]["empty_facesets"]) == {e["name"] for e in split["eras"]}
        assert exported, "no era exported"
        assert [e["thin"] for e in split["eras"]] == [min_era_faces > len(e["members"]) for e in split["eras"]]
        assert any(e["thin"] for e in split["eras"]) == (min_era_faces == 8)
        group_key = next(k for k in obama if k.endswith("_1"))  # Obama in the Biden group photo
        for e in split["eras"]:
            if e["name"] not in exported:
                continue
            x = exported[e["name"]]
            d = out / x["dir"]
            assert x["kind"] == "era" and x["parent"] == "obama" and x["thin"] == e["thin"]
            assert (d / f"{e['name']}.txt").exists()
            assert (d / "THIN.txt").exists() == e["thin"]
            assert (d / "manifest.json").exists()
            for b in x["bundles"].values():
                assert layout_problems(out / b) == []
            keys = [c["face_key"] for c in x["crops"]]
            assert set(keys) <= {m["face_key"] for m in e["members"]}
            for c in x["crops"]:
                assert (out / c["file"]).exists()
            if group_key in keys:  # the crop of the group photo is Obama's face: its own key, its box
                c = next(c for c in x["crops"] if c["face_key"] == group_key)
                row = faces.set_index("face_key").loc[group_key]
                assert c["bbox"] == pytest.approx([row.x1, row.y1, row.x2, row.y2], abs=0.5)
