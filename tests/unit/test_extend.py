"""`facesets extend CACHE RAW`: new faces join existing clusters, nobody moves, new ones numbered past the max."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from facesets import schema
from facesets.embed import sidecar_paths

MODEL = "opencv-yunet-sface-2021dec-test"
DIM = 32


def _emb(axis: int, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    v = np.zeros(DIM)
    v[axis] = 1.0
    v += 0.08 * rng.normal(size=DIM)
    return list((v / np.linalg.norm(v)).astype(np.float32))


def _table(tmp, people: dict[str, list[int]], seed0: int = 0) -> pd.DataFrame:
    """One photo per face; ``people`` maps a photo prefix to the identity axis of each photo."""
    rows = []
    photos = tmp / "photos"
    photos.mkdir(exist_ok=True)
    seed = seed0
    for prefix, axes in people.items():
        for i, ax in enumerate(axes):
            sha = f"{prefix}{i:02d}".ljust(64, "0")
            path = photos / f"{prefix}{i:02d}.jpg"
            path.write_bytes(b"jpeg " + sha.encode())
            seed += 1
            rows.append(
                {
                    "face_key": schema.face_key(sha, 0),
                    "sha256": sha,
                    "face_index": 0,
                    "source": "s",
                    "path": str(path),
                    "relpath": path.name,
                    "aliases": [],
                    "img_width": 640,
                    "img_height": 480,
                    "x1": 10.0,
                    "y1": 10.0,
                    "x2": 200.0,
                    "y2": 220.0,
                    "kps": [0.0] * 10,
                    "det_score": 0.9,
                    "embedding": _emb(ax, seed),
                    "model_id": MODEL,
                }
            )
    return pd.DataFrame(rows)


def _write(df: pd.DataFrame, path) -> None:
    schema.write_table(df, schema.FACES, path)
    images = df[["source", "sha256", "path", "relpath", "aliases", "img_width", "img_height", "model_id"]].copy()
    images["status"], images["error"], images["n_faces"], images["orientation"], images["capture_time"] = (
        "faces", None, 1, 1, None,
    )
    schema.write_table(images, schema.IMAGES, sidecar_paths(path)[0])


def _run(*args) -> dict:
    proc = subprocess.run([sys.executable, "-m", "facesets", *map(str, args)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _assignment(raw) -> dict[str, str]:
    return {f["face_key"]: f["cluster"] for f in json.loads((raw / "manifest.json").read_text())["faces"]}


def test_extend_joins_existing_and_numbers_new_past_the_max(tmp_path):
    old = _table(tmp_path, {"a": [0] * 6, "b": [1] * 4, "z": [7]})
    cache = tmp_path / "faces.parquet"
    _write(old, cache)
    raw = tmp_path / "raw"
    _run("cluster", cache, raw)
    before = _assignment(raw)
    assert sorted(set(before.values())) == ["_singletons", "person_001", "person_002"]

    new = _table(tmp_path, {"n": [1, 1, 5, 5, 5, 7]}, seed0=100)
    _write(pd.concat([old, new], ignore_index=True), cache)
    summary = _run("extend", cache, raw)
    after = _assignment(raw)
    assert {k: after[k] for k in before if before[k] != "_singletons"} == {
        k: v for k, v in before.items() if v != "_singletons"
    }
    b = before[old["face_key"].iloc[6]]  # the "b" person
    assert [after[k] for k in new["face_key"].iloc[:2]] == [b, b]
    assert {after[k] for k in new["face_key"].iloc[2:5]} == {"person_003"}
    # the old singleton z and the new face on the same axis form a new person together
    assert after[old["face_key"].iloc[-1]] == after[new["face_key"].iloc[-1]] == "person_004"
    assert summary["joined_existing"] == 2 and summary["new_faces"] == 6
    for name in ("person_003", "person_004"):
        assert (raw / name).is_dir()


def test_extend_needs_the_old_faces(tmp_path):
    old = _table(tmp_path, {"a": [0] * 3})
    cache = tmp_path / "faces.parquet"
    _write(old, cache)
    raw = tmp_path / "raw"
    _run("cluster", cache, raw)
    _write(old.iloc[1:], cache)
    proc = subprocess.run(
        [sys.executable, "-m", "facesets", "extend", str(cache), str(raw)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "not in this face table" in proc.stderr and "faces.parquet" in proc.stderr


@pytest.mark.parametrize("bad", ["{broken", None])
def test_extend_names_a_bad_raw_folder(tmp_path, bad):
    cache = tmp_path / "faces.parquet"
    _write(_table(tmp_path, {"a": [0]}), cache)
    raw = tmp_path / "raw"
    raw.mkdir()
    if bad is not None:
        (raw / "manifest.json").write_text(bad)
    proc = subprocess.run(
        [sys.executable, "-m", "facesets", "extend", str(cache), str(raw)], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "manifest.json" in proc.stderr
