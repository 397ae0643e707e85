"""The face store: immutable segments, atomic writes, damaged segments, several writers."""

import multiprocessing as mp

import numpy as np
import pandas as pd

from facesets.store import FaceStore


def _rows(sha: str, n_faces: int) -> pd.DataFrame:
    if n_faces == 0:
        return pd.DataFrame([{"sha256": sha, "status": "noface", "face_index": -1, "img_width": 10, "img_height": 10}])
    return pd.DataFrame(
        [
            {
                "sha256": sha,
                "status": "faces",
                "face_index": i,
                "img_width": 10,
                "img_height": 10,
                "x1": 0.0,
                "y1": 0.0,
                "x2": 5.0,
                "y2": 5.0,
                "kps": np.zeros(10, np.float32),
                "det_score": 0.9,
                "embedding": np.ones(4, np.float32) / 2,
                "model_id": "m",
            }
            for i in range(n_faces)
        ]
    )


def test_add_done_load(tmp_path):
    store = FaceStore(tmp_path, "m")
    assert store.done() == set()
    store.add(pd.concat([_rows("a", 2), _rows("b", 0)]))
    store.add(_rows("c", 1))
    assert store.done() == {"a", "b", "c"}
    got = store.load(["a", "c"])
    assert sorted(zip(got.sha256, got.face_index, strict=True)) == [("a", 0), ("a", 1), ("c", 0)]
    assert len(store.segments()) == 2


def test_repeated_results_keep_the_first_segment(tmp_path):
    store = FaceStore(tmp_path, "m")
    store.add(_rows("a", 1))
    store.add(_rows("a", 3))  # e.g. two shards raced on the same image
    assert len(store.load(["a"])) == 1


def test_partial_and_damaged_segments_are_ignored(tmp_path):
    store = FaceStore(tmp_path, "m")
    store.add(_rows("a", 1))
    (store.dir / ".tmp-seg-x.parquet.123").write_bytes(b"half a file")  # crash during write
    (store.dir / "seg-99999999999999999999-1-deadbeef.parquet").write_bytes(b"PAR1garbage")
    assert store.done() == {"a"}
    assert len(store.load(["a"])) == 1


def test_compact_merges_segments(tmp_path):
    store = FaceStore(tmp_path, "m")
    for s in "abc":
        store.add(_rows(s, 1))
    store.compact()
    assert len(store.segments()) == 1 and store.done() == {"a", "b", "c"}


def _writer(args):
    root, k = args
    store = FaceStore(root, "m")
    for i in range(5):
        store.add(_rows(f"w{k}-{i}", 1))


def test_concurrent_writers_never_collide(tmp_path):
    with mp.get_context("spawn").Pool(4) as pool:
        pool.map(_writer, [(tmp_path, k) for k in range(4)])
    store = FaceStore(tmp_path, "m")
    assert len(store.segments()) == 20
    assert len(store.done()) == 20
