"""Issue #18: digests that decide what is rewritten, hard links that store a crop once."""

from __future__ import annotations

import errno
import json
import os
import shutil
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from facesets import ledger as L
from facesets import links
from facesets import merge as M
from facesets.dedup import dedup_options
from facesets.fsz import BundleCache, bundle_digest, layout_problems, write_fsz_from_files
from facesets.report import SheetOptions, contact_sheets, export_sheet_digest, library_sheets

OPTS = SheetOptions(columns=4, thumb=64, max_tiles=10)


def _png(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".png", cv2.resize(img, (64, 64), interpolation=cv2.INTER_NEAREST))
    assert ok
    path.write_bytes(buf.tobytes())
    return path


# ---------------------------------------------------------------------------- digests


def test_bundle_digest_is_the_entries_in_order_and_nothing_else():
    a = bundle_digest(["k1", "k2"])
    assert a == bundle_digest(["k1", "k2"])
    assert a != bundle_digest(["k2", "k1"])  # the order is in the bytes
    assert a != bundle_digest(["k1", "k2", "k3"])
    assert a != bundle_digest(["k1"])


def test_sheet_digest_follows_what_the_sheet_draws(tmp_path):
    entry = {"name": "faceset_001", "digest": "d1", "unique_images": 2, "crops": [{"file": "x.png", "score": 0.5}]}
    base = export_sheet_digest(tmp_path, entry, "demo", OPTS)
    assert base == export_sheet_digest(tmp_path, dict(entry), "demo", OPTS)
    assert base != export_sheet_digest(tmp_path, {**entry, "digest": "d2"}, "demo", OPTS)  # other pixels
    # refine renamed the set (a larger one grew past it): the sheet draws the same, it stays
    renamed = {**entry, "name": "faceset_002", "dir": "faceset_002", "crops": [{"file": "y.png", "score": 0.5}]}
    assert base == export_sheet_digest(tmp_path, renamed, "demo", OPTS)
    assert base != export_sheet_digest(tmp_path, {**entry, "crops": [{"file": "x.png", "score": 0.6}]}, "demo", OPTS)
    assert base != export_sheet_digest(tmp_path, entry, "other", OPTS)
    assert base != export_sheet_digest(tmp_path, entry, "demo", SheetOptions(columns=5, thumb=64, max_tiles=10))
    # without the export's digest the crop files stand for the pixels: a replaced file is another sheet
    bare = {k: v for k, v in entry.items() if k != "digest"}
    _png(tmp_path / "x.png", 1)
    before = export_sheet_digest(tmp_path, bare, "demo", OPTS)
    tmp = _png(tmp_path / "y.png", 2)
    os.replace(tmp, tmp_path / "x.png")
    assert export_sheet_digest(tmp_path, bare, "demo", OPTS) != before


# ---------------------------------------------------------------------------- links


def test_link_or_copy_links_and_the_link_outlives_its_source(tmp_path):
    src = _png(tmp_path / "cache" / "a.png", 1)
    data = src.read_bytes()
    dest = tmp_path / "out" / "crops" / "0.png"
    assert links.link_or_copy(src, dest) is True
    assert os.path.samefile(src, dest) and dest.stat().st_nlink == 2
    src.unlink()  # the crop cache is deleted: the output's name still holds the bytes
    assert dest.read_bytes() == data and dest.stat().st_nlink == 1
    assert not list(dest.parent.glob(".tmp-*"))


def test_link_or_copy_copies_where_links_cannot_be_made(tmp_path, monkeypatch):
    src = _png(tmp_path / "a.png", 1)

    def cross_device(a, b):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(links.os, "link", cross_device)
    dest = tmp_path / "b" / "a.png"
    assert links.link_or_copy(src, dest) is False
    assert dest.read_bytes() == src.read_bytes() and not os.path.samefile(src, dest)


def test_link_or_copy_names_a_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError):
        links.link_or_copy(tmp_path / "gone.png", tmp_path / "x.png")
    assert not list(tmp_path.glob(".tmp-*"))


# ---------------------------------------------------------------------------- the bundle cache


def test_bundle_cache_links_an_unchanged_bundle_and_prunes_the_rest(tmp_path):
    pngs = [_png(tmp_path / "c" / f"{i}.png", i) for i in range(3)]
    cache_dir = tmp_path / "bundles"
    c1 = BundleCache(cache_dir)
    c1.place(tmp_path / "run1" / "s_all.fsz", bundle_digest(["a", "b", "c"]), pngs)
    c1.place(tmp_path / "run1" / "t_all.fsz", bundle_digest(["a"]), pngs[:1])
    first = tmp_path / "run1" / "s_all.fsz"
    assert layout_problems(first) == [] and (c1.written, c1.reused) == (2, 0)
    st = first.stat()
    # the next run: s unchanged, t changed
    c2 = BundleCache(cache_dir)
    c2.place(tmp_path / "run2" / "s_all.fsz", bundle_digest(["a", "b", "c"]), pngs)
    c2.place(tmp_path / "run2" / "t_all.fsz", bundle_digest(["b"]), pngs[1:2])
    again = (tmp_path / "run2" / "s_all.fsz").stat()
    assert (again.st_ino, again.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert (c2.written, c2.reused) == (1, 1)
    assert c2.prune() == 1  # t's old bundle: no output of this run uses it
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted(
        [f"{bundle_digest(['a', 'b', 'c'])}.fsz", f"{bundle_digest(['b'])}.fsz"]
    )
    # run1's output kept its own name of the pruned bundle
    with zipfile.ZipFile(tmp_path / "run1" / "t_all.fsz") as zf:
        assert zf.read("0.png") == pngs[0].read_bytes()


def test_bundle_cache_rewrites_an_entry_pruned_under_it(tmp_path, monkeypatch):
    pngs = [_png(tmp_path / "c" / "0.png", 0)]
    cache = BundleCache(tmp_path / "bundles")
    key = bundle_digest(["a"])
    real = links.link_or_copy
    calls = []

    def racing(src, dest):  # another run's prune removes the entry between the check and the link
        if not calls:
            calls.append(1)
            Path(src).unlink()
        return real(src, dest)

    monkeypatch.setattr("facesets.fsz.link_or_copy", racing)
    cache.place(tmp_path / "out.fsz", key, pngs)
    assert layout_problems(tmp_path / "out.fsz") == []


# ---------------------------------------------------------------------------- sheets


def _sheet_export(root: Path, scores: dict[str, float]) -> Path:
    entries = []
    for i, (name, score) in enumerate(scores.items()):
        _png(root / name / "crops" / "0.png", i)
        entries.append(
            {
                "name": name,
                "digest": f"d{i}",
                "unique_images": 1,
                "crops": [{"file": f"{name}/crops/0.png", "score": score, "components": {}}],
            }
        )
    (root / "manifest.json").write_text(json.dumps({"version": 1, "source": "s", "facesets": entries}))
    return root


def test_contact_sheets_redraw_only_changed_sets(tmp_path):
    export = _sheet_export(tmp_path / "export", {"a": 0.5, "b": 0.6})
    out, cache = tmp_path / "sheets", tmp_path / "cache"
    contact_sheets(export, out, OPTS, cache=cache, workers=2)
    a1, b1 = (out / "a.png").stat(), (out / "b.png").stat()
    _sheet_export(export, {"a": 0.5, "b": 0.9})  # b's score changed
    shutil.rmtree(out)  # as Snakemake does before it reruns the job
    contact_sheets(export, out, OPTS, cache=cache, workers=2)
    a2, b2 = (out / "a.png").stat(), (out / "b.png").stat()
    assert (a2.st_ino, a2.st_mtime_ns) == (a1.st_ino, a1.st_mtime_ns)
    assert b2.st_ino != b1.st_ino
    assert len(list(cache.iterdir())) == 2  # b's old sheet pruned
    # without a cache everything is drawn, the same pixels
    contact_sheets(export, tmp_path / "plain", OPTS, workers=1)
    assert (tmp_path / "plain" / "a.png").read_bytes() == (out / "a.png").read_bytes()


# ---------------------------------------------------------------------------- the library


def _export(root: Path, keys: list[str], immutable: bool) -> Path:
    """An export as export-swap writes it: crops are links of a crop cache's files."""
    d = root / "export" / "s1"
    crops = []
    for i, k in enumerate(keys):
        cached = _png(root / "cache" / f"{k}.png", i)
        links.link_or_copy(cached, d / "faceset_001" / "crops" / f"{i}.png")
        crops.append({"file": f"faceset_001/crops/{i}.png", "face_key": k, "sha256": k.split("_")[0],
                      "source_path": f"/p/{k}.jpg", "score": round(0.9 - 0.1 * i, 2)})  # fmt: skip
    files = [d / c["file"] for c in crops]
    write_fsz_from_files(d / "faceset_001" / "faceset_001_all.fsz", files)
    write_fsz_from_files(d / "faceset_001" / "faceset_001_top2.fsz", files[:2])
    entry = {"name": "faceset_001", "centroid": [1.0] + [0.0] * 7, "crops": crops,
             "bundles": {"top": "faceset_001/faceset_001_top2.fsz", "all": "faceset_001/faceset_001_all.fsz"}}  # fmt: skip
    man = {
        "version": 1,
        "source": "s1",
        "model_id": "opencv-yunet-sface-2021dec-test",
        "settings": {"top_n": 2},
        "facesets": [entry],
    }
    if immutable:
        man["immutable_files"] = True
    (d / "manifest.json").write_text(json.dumps(man))
    return d


def _faces(path: Path, keys: list[str]) -> Path:
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = [{"face_key": k, "embedding": list((np.eye(8)[0] + 0.01 * rng.normal(size=8)).astype(np.float32))}
            for k in keys]  # fmt: skip
    pd.DataFrame(rows).to_parquet(path)
    return path


KEYS = [f"{c * 64}_0" for c in "abc"]


def test_library_links_export_crops_and_bundles_and_survives_their_deletion(tmp_path):
    export = _export(tmp_path, KEYS, immutable=True)
    faces = _faces(tmp_path / "f.parquet", KEYS)
    swap = tmp_path / "swap"
    M.run_merge([("s1", export)], [faces], swap, M.merge_settings(dedup_options(), top_n=2))
    d = swap / "faceset_001"
    for i, k in enumerate(KEYS):
        crop = d / "crops" / f"{k}.png"
        assert os.path.samefile(crop, export / "faceset_001" / "crops" / f"{i}.png")
        assert os.path.samefile(crop, swap / ".faces" / f"{k}.png")
    # the library ranks its members as the export did: the export's bundle files, linked
    assert os.path.samefile(d / "faceset_001_all.fsz", export / "faceset_001" / "faceset_001_all.fsz")
    assert os.path.samefile(d / "faceset_001_top2.fsz", export / "faceset_001" / "faceset_001_top2.fsz")
    data = {p: p.read_bytes() for p in d.rglob("*") if p.is_file()}
    shutil.rmtree(export)  # the link sources go: the export and the crop cache
    shutil.rmtree(tmp_path / "cache")
    assert {p: p.read_bytes() for p in d.rglob("*") if p.is_file()} == data
    for b in ("faceset_001_all.fsz", "faceset_001_top2.fsz"):
        assert layout_problems(d / b) == []
    with zipfile.ZipFile(d / "faceset_001_all.fsz") as zf:
        assert len(zf.namelist()) == 3
    assert library_sheets(swap, tmp_path / "sheets", OPTS)  # the report reads it too
    # and the ledger still builds the folder from its own files
    shutil.rmtree(d)
    ledger = L.load(swap / "ledger.json")
    assert M.build_identity(ledger.identities[0], swap, 2) is True
    with zipfile.ZipFile(d / "faceset_001_all.fsz") as zf:
        assert [zf.read(n) for n in zf.namelist()] == [(d / "crops" / f"{k}.png").read_bytes() for k in KEYS]


def test_an_export_that_may_rewrite_its_files_is_copied(tmp_path):
    export = _export(tmp_path, KEYS, immutable=False)  # not written by export-swap: keep copies
    faces = _faces(tmp_path / "f.parquet", KEYS)
    swap = tmp_path / "swap"
    M.run_merge([("s1", export)], [faces], swap, M.merge_settings(dedup_options(), top_n=2))
    crop = swap / "faceset_001" / "crops" / f"{KEYS[0]}.png"
    assert not os.path.samefile(crop, export / "faceset_001" / "crops" / "0.png")
    assert crop.read_bytes() == (export / "faceset_001" / "crops" / "0.png").read_bytes()


def test_relocate_with_an_index_is_relocate(tmp_path):
    def ledger():
        a = L.Identity(1, "a", "discovered", members={"k1": L.Member("s", "h1", "/old/1.jpg", 0.5, "c")})
        era = L.Identity(2, "a_era1", "era", parent="a", members={"k1": L.Member("s", "h1", "/old/1.jpg", 0.5, "c")})
        other = L.Identity(3, "b", "discovered", members={"k2": L.Member("t", "h2", "/old/2.jpg", 0.5, "c")})
        return L.Ledger([a, era, other])

    crops = [{"face_key": "k1", "source_path": "/new/1.jpg"}, {"face_key": "k2", "source_path": "/new/2.jpg"}]
    plain, indexed = ledger(), ledger()
    assert L.relocate(plain, "s", crops) == 2  # the member and its era copy; k2 is another source's
    assert L.relocate(indexed, "s", crops, L.members_by_key(indexed, "s")) == 2
    assert L.to_json(plain) == L.to_json(indexed)
    assert plain.by_number(3).members["k2"].path == "/old/2.jpg"
