"""Issue #18: a small change costs a small amount of writing (demo photos, the whole default target).

Run 1 builds the demo library. Run 2 adds two new photos of the person of one of the smallest
exported sets (mirror images of two of its photos: new bytes, not near-duplicates, the same
face); it grows past others, so refine (which numbers sets by size) renames them. Then:

* every export set whose members did not change keeps its bundles and its contact sheet: the
  same inode, mtime and bytes (a hard link of the file it had, not a rewrite), under whatever
  name refine gave it;
* the set that gained the photos has new bundles holding the new faces;
* every library identity whose members did not change keeps its folder's bundles and its
  contact sheet (inode, mtime, bytes), and so do the per-source sheets of unchanged sets;
* the library's invariants hold: numbers unchanged, members never move, bundles load as roop
  loads them, one crop file per face (library crop, ``.faces/`` keep and export crop are one inode).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import pytest

from facesets.fsz import layout_problems
from tests.conftest import run_snakemake, write_workflow_config

pytestmark = pytest.mark.slow

EXTRA = "refine:\n  min_faces: 2\n"


def _stamp(p: Path) -> tuple[int, int, bytes]:
    st = p.stat()
    return st.st_ino, st.st_mtime_ns, p.read_bytes()


def _export_sets(tmp: Path) -> dict[tuple[str, ...], dict]:
    """Export sets by their members (sorted face keys): name, bundle stamps."""
    d = tmp / "out" / "export" / "demo"
    man = json.loads((d / "manifest.json").read_text())
    out = {}
    for e in man["facesets"]:
        keys = tuple(sorted(c["face_key"] for c in e["crops"]))
        out[keys] = {
            "name": e["name"],
            "source_paths": {c["source_path"] for c in e["crops"]},
            "bundles": {k: _stamp(d / v) for k, v in e["bundles"].items()},
            "sheet": _stamp(tmp / "out" / "report" / "demo" / "contact_sheets" / f"{e['name']}.png"),
        }
    return out


def _library(tmp: Path) -> dict[int, dict]:
    swap = tmp / "out" / "facesets_swap_ready"
    man = json.loads((swap / "manifest.json").read_text())
    ledger = json.loads((swap / "ledger.json").read_text())
    members = {i["number"]: set(i["members"]) for i in ledger["identities"]}
    sheets = tmp / "out" / "report" / "library" / "contact_sheets"
    out = {}
    for e in man["facesets"]:
        out[e["number"]] = {
            "name": e["name"],
            "members": members[e["number"]],
            "bundles": {k: _stamp(swap / v) for k, v in e["bundles"].items()},
            "sheet": _stamp(sheets / f"{e['number']:03d}_{e['name']}.png"),
        }
    return out


@pytest.fixture(scope="module")
def runs(demo_photos, model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("incremental")
    photos = tmp / "photos"
    shutil.copytree(demo_photos, photos)
    cfg = write_workflow_config(tmp, photos, model_dir, name="demo", extra=EXTRA)
    args = ["--configfile", str(cfg), "--cores", "2", "all"]
    run_snakemake(args, tmp, timeout=900)
    first_sets, first_lib = _export_sets(tmp), _library(tmp)
    man = json.loads((tmp / "out" / "export" / "demo" / "manifest.json").read_text())
    # the last of the smallest sets of 2+ photos (export's gates may leave one): growing by two
    # photos moves it ahead of others, which refine renames
    sets = [e for e in man["facesets"] if e["unique_images"] >= 2]
    assert sets, "no exported set of two photos"
    biggest = max(sets, key=lambda e: (-e["unique_images"], e["name"]))
    sources = sorted({c["source_path"] for c in biggest["crops"]})[:2]
    added = []
    for i, src in enumerate(sources):
        img = cv2.imread(str(tmp / src) if not os.path.isabs(src) else src)
        assert img is not None, src
        dest = photos / "added" / f"mirror_{i}.jpg"
        dest.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(dest), cv2.flip(img, 1), [cv2.IMWRITE_JPEG_QUALITY, 95])
        added.append(dest)
    second = run_snakemake(args, tmp, timeout=900)
    return {
        "tmp": tmp,
        "biggest": biggest,
        "added": added,
        "first_sets": first_sets,
        "first_lib": first_lib,
        "sets": _export_sets(tmp),
        "lib": _library(tmp),
        "log": second.stderr,
    }


def _grown(r) -> dict:
    hits = [v for v in r["sets"].values() if any("mirror_" in p for p in v["source_paths"])]
    assert hits, f"no export set took the added photos; the second run said:\n{r['log'][-3000:]}"
    return hits[0]


def test_unchanged_export_sets_keep_their_bundle_files(runs):
    unchanged = [k for k in runs["first_sets"] if k in runs["sets"]]
    assert len(unchanged) >= len(runs["first_sets"]) - 2, "adding one person's photos changed most sets"
    assert unchanged
    for k in unchanged:
        before, after = runs["first_sets"][k]["bundles"], runs["sets"][k]["bundles"]
        for kind in ("top", "all"):
            assert after[kind] == before[kind], f"{runs['sets'][k]['name']} {kind}: bundle rewritten"
        assert runs["sets"][k]["sheet"] == runs["first_sets"][k]["sheet"], "an unchanged set's sheet was redrawn"
    renamed = [k for k in unchanged if runs["first_sets"][k]["name"] != runs["sets"][k]["name"]]
    assert renamed, "no set was renamed: the test does not exercise a set that moved"


def test_the_grown_set_has_new_bundles_with_the_new_faces(runs):
    grown = _grown(runs)
    old = next(v for v in runs["first_sets"].values() if v["name"] == runs["biggest"]["name"])
    assert grown["bundles"]["all"][0] != old["bundles"]["all"][0]  # a new file
    assert grown["bundles"]["all"][2] != old["bundles"]["all"][2]  # other bytes
    assert len(grown["source_paths"]) > len(old["source_paths"])


def test_library_identities_that_did_not_change_are_untouched(runs):
    first, now = runs["first_lib"], runs["lib"]
    assert set(first) <= set(now), "an identity number disappeared"
    changed = [n for n in first if now[n]["members"] != first[n]["members"]]
    assert len(changed) == 1, f"expected the one grown identity to change, got {changed}"
    for n in first:
        assert first[n]["members"] <= now[n]["members"], f"#{n}: members moved"
        assert now[n]["name"] == first[n]["name"]
        if n in changed:
            assert now[n]["bundles"]["all"][0] != first[n]["bundles"]["all"][0]
            assert now[n]["sheet"] != first[n]["sheet"]
        else:
            assert now[n]["bundles"] == first[n]["bundles"], f"#{n}: bundle rewritten"
            assert now[n]["sheet"] == first[n]["sheet"], f"#{n}: sheet redrawn"


def test_library_bundles_load_and_crops_are_stored_once(runs):
    swap = runs["tmp"] / "out" / "facesets_swap_ready"
    man = json.loads((swap / "manifest.json").read_text())
    for e in man["facesets"]:
        for rel in e["bundles"].values():
            assert layout_problems(swap / rel) == [], rel
        for png in (swap / e["dir"] / "crops").glob("*.png"):
            kept = swap / ".faces" / png.name
            assert kept.exists() and os.path.samefile(kept, png), f"{png}: a second copy of its .faces/ crop"
            assert png.stat().st_nlink >= 3, f"{png}: not shared with the export and the crop cache"


def test_an_export_stopped_midway_then_rerun_gives_the_same_folder(runs, model_dir, monkeypatch):
    """Ctrl-C while export-swap places bundles, then the same command: the folder is what it was
    (the old one stays in place until the new one is complete), and the rerun links every bundle."""
    from facesets import fsz
    from facesets.cli import main

    tmp = runs["tmp"]
    monkeypatch.chdir(tmp)  # the rule's relative paths (relative roots)
    out = Path("out/export/demo")
    argv = ["export-swap", "work/sources/demo/faces.parquet", "out/refine/demo/refine_manifest.json", str(out),
            "--raw-manifest", "out/raw/demo/manifest.json", "--candidates",
            "--quality", "work/sources/demo/quality.parquet", "--duplicates", "work/sources/demo/duplicates.json",
            "--backend", "opencv", "--model-dir", str(model_dir), "--crop-cache", "work/cache/crops",
            "--workers", "1"]  # fmt: skip
    before = {p: _stamp(p) for p in out.rglob("*") if p.is_file()}
    manifest = (out / "manifest.json").read_bytes()
    real, calls = fsz.BundleCache.place, []

    def interrupted(self, target, digest, files):
        calls.append(target)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return real(self, target, digest, files)

    monkeypatch.setattr(fsz.BundleCache, "place", interrupted)
    assert main(argv) != 0  # the CLI reports the interrupt
    assert {p: _stamp(p) for p in out.rglob("*") if p.is_file()} == before, "a stopped export changed the folder"
    assert not list(out.parent.glob(".tmp-*"))
    monkeypatch.setattr(fsz.BundleCache, "place", real)
    assert main(argv) == 0
    assert (out / "manifest.json").read_bytes() == manifest
    bundles = {p: s for p, s in before.items() if p.suffix == ".fsz"}
    now = {p: _stamp(p) for p in bundles}
    assert now == bundles, "the rerun rewrote bundles it had"
