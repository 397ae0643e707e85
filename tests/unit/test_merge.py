"""manifest-merge at the file level: exports + era splits -> facesets_swap_ready/, crash-safe, idempotent."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from facesets import ledger as L
from facesets import merge as M
from facesets import schema
from facesets.dedup import dedup_options

MODEL = "opencv-yunet-sface-2021dec-test"
DIM = 16


def _vec(axis: int, seed: int = 0) -> np.ndarray:
    v = np.zeros(DIM)
    v[axis] = 1.0
    v += 0.05 * np.random.default_rng(seed).normal(size=DIM)
    return v / np.linalg.norm(v)


def _png(path: Path, face_key: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # a distinct texture per crop: flat squares would all be near-duplicates of each other
    seed = int.from_bytes(face_key.encode()[:8].ljust(8, b"-"), "little")
    img = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".png", cv2.resize(img, (64, 64), interpolation=cv2.INTER_NEAREST))
    assert ok
    path.write_bytes(buf.tobytes())


def _export(root: Path, source: str, sets: dict[str, tuple[int, list[str]]], extra=None) -> Path:
    """An export folder: ``sets`` maps a set name to (identity axis, face keys)."""
    d = root / "export" / source
    entries = []
    for name, (axis, keys) in sets.items():
        crops = []
        for i, k in enumerate(keys):
            _png(d / name / "crops" / f"{i}.png", k)
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
    s = M.run_merge([("s1", e1)], [faces], swap, M.merge_settings(dedup_options(), top_n=2))
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
    before = {
        p: p.read_bytes() for p in swap.rglob("*") if p.is_file() and ".backup" not in p.parts and p.name != M.LOCK
    }
    s2 = M.run_merge([("s1", e1)], [faces], swap, M.merge_settings(dedup_options(), top_n=2))
    assert s2["changed"] == [] and s2["rebuilt"] == []
    after = {
        p: p.read_bytes() for p in swap.rglob("*") if p.is_file() and ".backup" not in p.parts and p.name != M.LOCK
    }
    assert after == before


def test_a_recomputed_export_that_renumbers_its_files_keeps_the_library(tmp_path):
    out = tmp_path / "out"
    e1 = _export(out, "s1", {"faceset_001": (0, ["a1_0", "a2_0"])})
    faces = _faces(tmp_path / "f.parquet", {"a1_0": 0, "a2_0": 0, "a3_0": 0, "c1_0": 3})
    swap = out / "facesets_swap_ready"
    M.run_merge([("s1", e1)], [faces], swap, M.merge_settings(dedup_options()))
    crop_a1 = (swap / "faceset_001" / "crops" / "a1_0.png").read_bytes()
    # New photos: the source's sets are renumbered and its crops rewritten in another order.
    e1 = _export(out, "s1", {"faceset_001": (3, ["c1_0"]), "faceset_002": (0, ["a3_0", "a1_0", "a2_0"])})
    M.run_merge([("s1", e1)], [faces], swap, M.merge_settings(dedup_options()))
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
    M.run_merge([("sorted", e1)], [faces], swap, M.merge_settings(dedup_options()), eras=[("kid", eras)])
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
    M.run_merge([("sorted", e1)], [faces], swap, M.merge_settings(dedup_options()), eras=[("kid", eras)])
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
        M.run_merge([("s1", e1)], [faces], swap, M.merge_settings(dedup_options()))
    assert not (swap / "ledger.json").exists() and (swap / "faceset_001" / "crops").is_dir()
    monkeypatch.undo()
    M.run_merge([("s1", e1)], [faces], swap, M.merge_settings(dedup_options()))
    man = json.loads((swap / "manifest.json").read_text())
    assert [(e["number"], e["faces"]) for e in man["facesets"]] == [(1, 2)]


def test_a_broken_export_manifest_is_named(tmp_path):
    d = tmp_path / "out" / "export" / "s1"
    d.mkdir(parents=True)
    (d / "manifest.json").write_text("{oops")
    with pytest.raises(ValueError, match=r"export/s1/manifest.json.*'s1'"):
        M.run_merge([("s1", d)], [], tmp_path / "out" / "facesets_swap_ready", M.merge_settings(dedup_options()))


def test_face_tables_feed_the_centroids(tmp_path):
    path = tmp_path / "f.parquet"
    _faces(path, {"a_0": 2})
    got = M.load_embeddings([path], {"a_0", "missing_0"})
    assert set(got) == {"a_0"} and abs(np.linalg.norm(got["a_0"]) - 1) < 1e-6
    assert schema.face_key("a", 0) == "a_0"


def test_a_near_duplicate_from_another_source_is_left_out(tmp_path):
    out = tmp_path / "out"
    e1 = _export(out, "s1", {"faceset_001": (0, ["a1_0", "a2_0"])})
    e2 = _export(out, "s2", {"faceset_001": (0, ["z9_0", "a3_0"])})
    # z9 is a1's frame at another size (another photo file, so another key and sha256)
    img = cv2.imread(str(e1 / "faceset_001" / "crops" / "0.png"))
    cv2.imwrite(str(e2 / "faceset_001" / "crops" / "0.png"), cv2.resize(img, (51, 51), interpolation=cv2.INTER_AREA))
    faces = _faces(tmp_path / "f.parquet", {"a1_0": 0, "a2_0": 0, "z9_0": 0, "a3_0": 0})
    swap = out / "facesets_swap_ready"
    s = M.run_merge([("s1", e1), ("s2", e2)], [faces], swap, M.merge_settings(dedup_options()))
    led = L.load(swap / "ledger.json")
    assert set(led.by_number(1).members) == {"a1_0", "a2_0", "a3_0"}
    assert s["duplicates_left_out"] == 1
    assert all(m.phash for m in led.by_number(1).members.values())


def test_a_discovered_set_below_min_faces_is_held_until_it_grows(tmp_path):
    out = tmp_path / "out"
    faces = _faces(tmp_path / "f.parquet", {"a1_0": 0, "a2_0": 0, "a3_0": 0})
    swap = out / "facesets_swap_ready"
    e1 = _export(out, "s1", {"faceset_001": (0, ["a1_0", "a2_0"])})
    s = M.run_merge([("s1", e1)], [faces], swap, M.merge_settings(dedup_options(), min_faces={"s1": 3}))
    assert s["identities"] == 0 and [n["photos"] for n in s["held"]] == [2]
    assert "min_faces 3" in s["held"][0]["message"]
    e1 = _export(out, "s1", {"faceset_001": (0, ["a1_0", "a2_0", "a3_0"])})
    s = M.run_merge([("s1", e1)], [faces], swap, M.merge_settings(dedup_options(), min_faces={"s1": 3}))
    assert s["identities"] == 1 and s["held"] == []


def test_a_label_renames_the_folder_and_keeps_the_number(tmp_path):
    out = tmp_path / "out"
    faces = _faces(tmp_path / "f.parquet", {"a1_0": 0, "a2_0": 0, "a3_0": 0})
    swap = out / "facesets_swap_ready"
    e1 = _export(out, "found", {"faceset_001": (0, ["a1_0", "a2_0"])})
    M.run_merge([("found", e1)], [faces], swap, M.merge_settings(dedup_options()))
    e2 = _export(out, "sorted", {"alice": (0, ["a2_0", "a3_0"])}, {"alice": {"kind": "identities", "label": "alice"}})
    M.run_merge([("found", e1), ("sorted", e2)], [faces], swap, M.merge_settings(dedup_options()))
    man = json.loads((swap / "manifest.json").read_text())
    assert [(e["number"], e["name"], e["kind"], e["faces"]) for e in man["facesets"]] == [(1, "alice", "identities", 3)]
    assert not (swap / "faceset_001").exists()
    assert sorted(p.name for p in (swap / "alice" / "crops").iterdir()) == ["a1_0.png", "a2_0.png", "a3_0.png"]


def test_a_second_writer_waits_for_the_lock_and_a_dead_holder_never_blocks(tmp_path):
    import fcntl
    import subprocess
    import sys

    swap = tmp_path / "lib"
    swap.mkdir()
    (swap / M.LOCK).write_text("pid 999999 on gone since 00:00:00\n")  # left by a killed merge
    with M.library_lock(swap, timeout=1):
        pass  # a stale lock file does not block
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl,os,sys,time; fd=os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX);"
            " print('locked', flush=True); time.sleep(float(sys.argv[2]))",
            str(swap / M.LOCK),
            "1.5",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RuntimeError, match=r"\.lock.*still locked"), M.library_lock(swap, timeout=0.3):
        pass
    with M.library_lock(swap, timeout=30):  # waits until the holder exits, then holds it
        assert holder.poll() is not None
        fd = os.open(swap / M.LOCK, os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
    holder.wait()


def test_crash_leftovers_are_cleaned_by_the_next_merge(tmp_path):
    out = tmp_path / "out"
    e1 = _export(out, "s1", {"faceset_001": (0, ["a1_0", "a2_0"])})
    faces = _faces(tmp_path / "f.parquet", {"a1_0": 0, "a2_0": 0})
    swap = out / "facesets_swap_ready"
    M.run_merge([("s1", e1)], [faces], swap, M.merge_settings(dedup_options()))
    (swap / "faceset_001" / "crops" / ".tmp-a9_0.png").write_bytes(b"half")
    (swap / ".tmp-manifest.json.x1").write_text("{")
    (swap / ".backup" / ".tmp-20260101T000000-1").mkdir(parents=True)
    gone = M.clean_leftovers(swap)
    assert sorted(gone) == [
        ".backup/.tmp-20260101T000000-1",
        ".tmp-manifest.json.x1",
        "faceset_001/crops/.tmp-a9_0.png",
    ]
    assert not list(swap.rglob(".tmp-*"))


def test_a_held_set_joins_an_identity_that_comes_later_whatever_the_order(tmp_path):
    out = tmp_path / "out"
    faces = _faces(tmp_path / "f.parquet", {"a1_0": 0, "a2_0": 0, "a3_0": 0, "a4_0": 0})
    small = _export(out, "bucket", {"faceset_001": (0, ["a1_0"])})  # one photo: held below min_faces 2
    big = _export(out, "later", {"faceset_001": (0, ["a2_0", "a3_0", "a4_0"])})
    settings = M.merge_settings(dedup_options(), min_faces={"bucket": 2, "later": 2})
    swap = out / "facesets_swap_ready"
    s = M.run_merge([("bucket", small)], [faces], swap, settings)
    assert s["identities"] == 0 and len(s["held"]) == 1
    # the bucket's export is unchanged; the person arrives from a source listed after it
    s = M.run_merge([("bucket", small), ("later", big)], [faces], swap, settings)
    led = L.load(swap / "ledger.json")
    assert set(led.by_number(1).members) == {"a1_0", "a2_0", "a3_0", "a4_0"} and s["held"] == []
    assert led.batches["bucket"]["entries"] == {"faceset_001": 1}
    # the same in one merge from an empty library
    swap2 = out / "other"
    M.run_merge([("bucket", small), ("later", big)], [faces], swap2, settings)
    assert L.to_json(L.load(swap2 / "ledger.json"))["identities"] == L.to_json(led)["identities"]
