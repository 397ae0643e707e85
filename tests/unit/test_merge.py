"""manifest-merge at the file level: exports + era splits -> facesets_swap_ready/, crash-safe, idempotent."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from facesets import ledger as L
from facesets import merge as M
from facesets import schema

MODEL = "opencv-yunet-sface-2021dec-test"
DIM = 16


def _vec(axis: int, seed: int = 0) -> np.ndarray:
    v = np.zeros(DIM)
    v[axis] = 1.0
    v += 0.05 * np.random.default_rng(seed).normal(size=DIM)
    return v / np.linalg.norm(v)


def _png(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", np.full((8, 8, 3), shade, np.uint8))
    assert ok
    path.write_bytes(buf.tobytes())


def _export(root: Path, source: str, sets: dict[str, tuple[int, list[str]]], extra=None) -> Path:
    """An export folder: ``sets`` maps a set name to (identity axis, face keys)."""
    d = root / "export" / source
    entries = []
    for name, (axis, keys) in sets.items():
        crops = []
        for i, k in enumerate(keys):
            _png(d / name / "crops" / f"{i}.png", 10 * i + axis)
            crops.append(
                {
                    "file": f"{name}/crops/{i}.png",
                    "face_key": k,
                    "sha256": k.split("_")[0],
                    "source_path": f"/p/{k}.jpg",
                    "score": round(0.9 - 0.1 * i, 2),
                }
            )
        entries.append({"name": name, "centroid": list(_vec(axis)), "crops": crops, **(extra or {}).get(name, {})})
    (d / "manifest.json").write_text(
        json.dumps({"version": 1, "source": source, "model_id": MODEL, "facesets": entries})
    )
    return d


def _faces(path: Path, keys_axes: dict[str, int]) -> Path:
    rows = [
        {"face_key": k, "embedding": list(_vec(a, i).astype(np.float32))} for i, (k, a) in enumerate(keys_axes.items())
    ]
    pd.DataFrame(rows).to_parquet(path)
    return path


def test_merge_builds_the_library_and_is_idempotent(tmp_path):
    out = tmp_path / "out"
    e1 = _export(out, "s1", {"faceset_001": (0, ["a1_0", "a2_0", "a3_0"]), "faceset_002": (1, ["b1_0", "b2_0"])})
    faces = _faces(tmp_path / "f.parquet", {"a1_0": 0, "a2_0": 0, "a3_0": 0, "b1_0": 1, "b2_0": 1})
    swap = out / "facesets_swap_ready"
    s = M.run_merge([("s1", e1)], [faces], swap, M.MergeSettings(top_n=2))
    assert [c["number"] for c in s["changed"]] == [1, 2]
    man = json.loads((swap / "manifest.json").read_text())
    assert [(e["number"], e["name"], e["faces"]) for e in man["facesets"]] == [
        (1, "faceset_001", 3),
        (2, "faceset_002", 2),
    ]
    with zipfile.ZipFile(swap / "faceset_001" / "faceset_001_top2.fsz") as zf:
        assert zf.namelist() == ["0.png", "1.png"]
    with zipfile.ZipFile(swap / "faceset_001" / "faceset_001_all.fsz") as zf:
        assert len(zf.namelist()) == 3
    assert (swap / "faceset_001" / "s1.txt").exists()
    before = {p: p.read_bytes() for p in swap.rglob("*") if p.is_file() and ".backup" not in p.parts}
    s2 = M.run_merge([("s1", e1)], [faces], swap, M.MergeSettings(top_n=2))
    assert s2["changed"] == [] and s2["rebuilt"] == []
    after = {p: p.read_bytes() for p in swap.rglob("*") if p.is_file() and ".backup" not in p.parts}
    assert after == before


def test_a_recomputed_export_that_renumbers_its_files_keeps_the_library(tmp_path):
    out = tmp_path / "out"
    e1 = _export(out, "s1", {"faceset_001": (0, ["a1_0", "a2_0"])})
    faces = _faces(tmp_path / "f.parquet", {"a1_0": 0, "a2_0": 0, "a3_0": 0, "c1_0": 3})
    swap = out / "facesets_swap_ready"
    M.run_merge([("s1", e1)], [faces], swap, M.MergeSettings())
    crop_a1 = (swap / "faceset_001" / "crops" / "a1_0.png").read_bytes()
    # New photos: the source's sets are renumbered and its crops rewritten in another order.
    e1 = _export(out, "s1", {"faceset_001": (3, ["c1_0"]), "faceset_002": (0, ["a3_0", "a1_0", "a2_0"])})
    M.run_merge([("s1", e1)], [faces], swap, M.MergeSettings())
    man = json.loads((swap / "manifest.json").read_text())
    assert [(e["number"], e["name"], e["faces"]) for e in man["facesets"]] == [
        (1, "faceset_001", 3),
        (2, "faceset_002", 1),
    ]
    assert (swap / "faceset_001" / "crops" / "a1_0.png").read_bytes() == crop_a1
    assert len(list((swap / ".backup").iterdir())) == 1


def test_era_splits_fold_in_with_thin_eras_apart(tmp_path):
    out = tmp_path / "out"
    keys = [f"k{i}_0" for i in range(6)]
    e1 = _export(out, "sorted", {"kid": (0, keys)}, extra={"kid": {"kind": "identities", "label": "kid"}})
    faces = _faces(tmp_path / "f.parquet", dict.fromkeys(keys, 0))
    eras = _export(
        out,
        "eras_kid",
        {"kid_era1": (0, keys[:4]), "kid_era2": (1, keys[4:])},
        extra={"kid_era1": {"thin": False}, "kid_era2": {"thin": True}},
    )
    swap = out / "facesets_swap_ready"
    M.run_merge([("sorted", e1)], [faces], swap, M.MergeSettings(), eras=[("kid", eras)])
    man = json.loads((swap / "manifest.json").read_text())
    assert [(e["number"], e["name"], e["kind"]) for e in man["facesets"]] == [
        (1, "kid", "identities"),
        (2, "kid_era1", "era"),
    ]
    assert [(e["number"], e["name"], e["dir"]) for e in man["thin_eras"]] == [(3, "kid_era2", "_thin/kid_era2")]
    assert man["facesets"][1]["provenance"]["parent"] == "kid"
    assert (swap / "_thin" / "kid_era2" / "THIN.txt").exists() and (swap / "kid_era1" / "kid_era1.txt").exists()
    assert (swap / "kid" / "kid.txt").exists()
    # The thin era grows: it leaves _thin/ and keeps its number.
    eras = _export(
        out,
        "eras_kid",
        {"kid_era1": (0, keys[:4]), "kid_era2": (1, [*keys[4:], "k9_0"])},
        extra={"kid_era1": {"thin": False}, "kid_era2": {"thin": False}},
    )
    M.run_merge([("sorted", e1)], [faces], swap, M.MergeSettings(), eras=[("kid", eras)])
    man = json.loads((swap / "manifest.json").read_text())
    assert [(e["number"], e["name"]) for e in man["facesets"]] == [(1, "kid"), (2, "kid_era1"), (3, "kid_era2")]
    assert man["thin_eras"] == [] and not (swap / "_thin" / "kid_era2").exists()


def test_a_crash_before_the_ledger_is_written_is_repaired_by_rerunning(tmp_path, monkeypatch):
    out = tmp_path / "out"
    e1 = _export(out, "s1", {"faceset_001": (0, ["a1_0", "a2_0"])})
    faces = _faces(tmp_path / "f.parquet", {"a1_0": 0, "a2_0": 0})
    swap = out / "facesets_swap_ready"

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(L, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        M.run_merge([("s1", e1)], [faces], swap, M.MergeSettings())
    assert not (swap / "ledger.json").exists() and (swap / "faceset_001" / "crops").is_dir()
    monkeypatch.undo()
    M.run_merge([("s1", e1)], [faces], swap, M.MergeSettings())
    man = json.loads((swap / "manifest.json").read_text())
    assert [(e["number"], e["faces"]) for e in man["facesets"]] == [(1, 2)]


def test_a_broken_export_manifest_is_named(tmp_path):
    d = tmp_path / "out" / "export" / "s1"
    d.mkdir(parents=True)
    (d / "manifest.json").write_text("{oops")
    with pytest.raises(ValueError, match=r"export/s1/manifest.json.*'s1'"):
        M.run_merge([("s1", d)], [], tmp_path / "out" / "facesets_swap_ready", M.MergeSettings())


def test_face_tables_feed_the_centroids(tmp_path):
    path = tmp_path / "f.parquet"
    _faces(path, {"a_0": 2})
    got = M.load_embeddings([path], {"a_0", "missing_0"})
    assert set(got) == {"a_0"} and abs(np.linalg.norm(got["a_0"]) - 1) < 1e-6
    assert schema.face_key("a", 0) == "a_0"
