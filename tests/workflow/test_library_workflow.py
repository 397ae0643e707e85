"""A library that grows, on real photos (dev-faces): hand-sorted identities, a mixed bucket, a later source.

train/ is the hand-sorted `identities` source, test/ + misc/ the `mixed` bucket, tests_images/
a later `folder` source. Numbers must stay put across re-runs, recomputations and new
sources; the obama/biden group photo must feed both identities with the right face each.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import run_snakemake

pytestmark = pytest.mark.slow

LOW_GATES = """
refine:
  min_faces: 2
  min_short: 40
  min_blur: 0
export:
  min_face_short: 40
eras:
  identities: [obama]
  min_era_faces: 3
"""


def _source(tmp: Path, name: str, kind: str, path: Path) -> Path:
    f = tmp / "sources" / f"{name}.yaml"
    f.parent.mkdir(exist_ok=True)
    f.write_text(f"name: {name}\nkind: {kind}\npath: {path}\n")
    return f


def _config(tmp: Path, model_dir: Path, sources: list[Path]) -> Path:
    cfg = tmp / "config.yaml"
    listed = "".join(f"  - {s}\n" for s in sources)
    cfg.write_text(
        f"work_root: {tmp / 'work'}\noutput_root: {tmp / 'out'}\nmodel_dir: {model_dir}\nsources:\n{listed}{LOW_GATES}"
    )
    return cfg


def _numbers(manifest: dict) -> dict[str, int]:
    return {e["name"]: e["number"] for e in manifest["facesets"]}


def _ledger(tmp: Path) -> dict:
    return json.loads((tmp / "out" / "facesets_swap_ready" / "ledger.json").read_text())


def _manifest_bytes(tmp: Path) -> bytes:
    return (tmp / "out" / "facesets_swap_ready" / "manifest.json").read_bytes()


@pytest.fixture(scope="module")
def library(dev_faces, model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("library")
    photos = tmp / "photos"
    shutil.copytree(dev_faces / "train", photos / "sorted")
    for sub in ("test", "misc"):
        shutil.copytree(dev_faces / sub, photos / "bucket" / sub)
    shutil.copytree(dev_faces / "tests_images", photos / "later")
    srcs = [
        _source(tmp, "sorted", "identities", photos / "sorted"),
        _source(tmp, "bucket", "mixed", photos / "bucket"),
    ]
    cfg = _config(tmp, model_dir, srcs)
    first = run_snakemake(["--configfile", str(cfg), "--cores", "2", "all"], tmp)
    # The era split needs obama in the library: the first run leaves it pending, the second splits.
    assert "not in the library yet" in (tmp / "work" / "logs" / "era" / "obama.log").read_text(), first.stderr[-2000:]
    run_snakemake(["--configfile", str(cfg), "--cores", "2", "all"], tmp)
    return tmp, cfg, photos, srcs


def test_hand_sorted_identities_are_numbered_in_order(library):
    tmp, *_ = library
    manifest = json.loads(_manifest_bytes(tmp))
    nums = _numbers(manifest)
    sorted_names = ["alex_lacamoire", "biden", "kit_harington", "obama", "rose_leslie"]
    assert [nums[n] for n in sorted_names] == [1, 2, 3, 4, 5], nums
    for n in sorted_names:
        d = tmp / "out" / "facesets_swap_ready" / n
        assert (d / f"{n}.txt").exists()
        assert (d / f"{n}_top30.fsz").exists() and (d / f"{n}_all.fsz").exists()
    assert "consent" in manifest["responsible_use"]


def test_group_photo_feeds_both_identities_with_the_right_face(library, opencv_analyzer):
    tmp, *_ = library
    led = _ledger(tmp)
    by_name = {i["name"]: i for i in led["identities"]}
    group = "obama_and_biden.jpg"

    def group_members(name):
        return {k: m for k, m in by_name[name]["members"].items() if m["path"].endswith(group)}

    obama, biden = group_members("obama"), group_members("biden")
    assert len(obama) == 1 and len(biden) == 1, (obama, biden)
    (ko, mo), (kb, mb) = next(iter(obama.items())), next(iter(biden.items()))
    assert ko.split("_")[0] == kb.split("_")[0] and ko != kb  # same photo, different faces
    # The crop in each identity holds that identity's face: its embedding is nearer its own centroid.
    root = tmp / "out" / "facesets_swap_ready"
    cents = {}
    for n in ("obama", "biden"):
        v = np.asarray(next(iter(by_name[n]["centroid_sum"].values())), np.float64)
        cents[n] = v / np.linalg.norm(v)
    for name, m in (("obama", mo), ("biden", mb)):
        rgb = cv2.cvtColor(cv2.imread(str(root / m["crop"]), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        dets = opencv_analyzer.detect(rgb)
        assert len(dets) == 1, (name, len(dets))
        e = np.asarray(opencv_analyzer.embed(rgb, dets)[0], np.float64)
        e /= np.linalg.norm(e)
        other = "biden" if name == "obama" else "obama"
        assert e @ cents[name] > e @ cents[other], name


def test_rerun_is_a_no_op(library):
    tmp, cfg, *_ = library
    before = _manifest_bytes(tmp)
    dry = run_snakemake(["--configfile", str(cfg), "--cores", "2", "-n", "all"], tmp)
    assert "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-2000:]
    # Merging the same exports again by hand changes nothing either.
    from facesets.cli import main

    out = tmp / "out"
    args = ["manifest-merge", str(out / "facesets_swap_ready")]
    for s in ("sorted", "bucket"):
        args += ["--export", f"{s}={out / 'export' / s}", "--faces", str(tmp / "work" / "sources" / s / "faces.parquet")]
    assert main(args) == 0
    assert _manifest_bytes(tmp) == before


def test_recomputing_upstream_does_not_renumber(library):
    tmp, cfg, *_ = library
    before = _numbers(json.loads(_manifest_bytes(tmp)))
    members_before = {i["name"]: set(i["members"]) for i in _ledger(tmp)["identities"]}
    for d in ("refine", "export"):
        shutil.rmtree(tmp / "out" / d)
    run_snakemake(["--configfile", str(cfg), "--cores", "2", "all"], tmp)
    assert _numbers(json.loads(_manifest_bytes(tmp))) == before
    after = {i["name"]: set(i["members"]) for i in _ledger(tmp)["identities"]}
    assert all(members_before[n] <= after[n] for n in members_before)


def test_adding_photos_reruns_only_that_source_and_a_new_source_numbers_past_the_max(library, dev_faces):
    tmp, cfg, photos, srcs = library
    before = _numbers(json.loads(_manifest_bytes(tmp)))
    shutil.copy(dev_faces / "insightface" / "t1.jpg", photos / "bucket" / "misc" / "party.jpg")
    dry = run_snakemake(["--configfile", str(cfg), "--cores", "2", "-n", "all"], tmp)
    text = dry.stdout + dry.stderr
    jobs = {line.strip() for line in text.splitlines() if line.startswith("rule ")}
    assert "rule stage:" in jobs and "rule manifest_merge:" in jobs, text[-3000:]
    assert "wildcards: source=sorted" not in text  # the hand-sorted source is untouched
    assert "reason:" in text.lower()
    # Add a later folder source: old numbers stay, new identities (if any) come after them.
    srcs.append(_source(tmp, "later", "folder", photos / "later"))
    cfg.write_text(cfg.read_text().replace(f"  - {srcs[1]}\n", f"  - {srcs[1]}\n  - {srcs[2]}\n"))
    run_snakemake(["--configfile", str(cfg), "--cores", "2", "all"], tmp)
    after = _numbers(json.loads(_manifest_bytes(tmp)))
    assert {n: after[n] for n in before} == before
    new = [num for n, num in after.items() if n not in before]
    assert all(num > max(before.values()) for num in new)
    backups = list((tmp / "out" / "facesets_swap_ready" / ".backup").iterdir())
    assert backups, "the previous manifest and ledger are backed up before a change"


def test_bundles_load_like_roop(library, opencv_analyzer):
    tmp, *_ = library
    manifest = json.loads(_manifest_bytes(tmp))
    root = tmp / "out" / "facesets_swap_ready"
    for e in manifest["facesets"]:
        with zipfile.ZipFile(root / e["bundles"]["top"]) as zf:
            names = zf.namelist()
            assert names == [f"{i}.png" for i in range(len(names))]
            for n in names:
                img = cv2.imdecode(np.frombuffer(zf.read(n), np.uint8), cv2.IMREAD_COLOR)
                assert img.dtype == np.uint8 and img.shape[2] == 3
                rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
                assert len(opencv_analyzer.detect(rgb)) == 1, (e["name"], n)


def test_mixed_dry_run_reports_without_touching_the_library(library):
    tmp, *_ = library
    from facesets.cli import main

    swap = tmp / "out" / "facesets_swap_ready"
    before = {p: p.stat().st_mtime_ns for p in swap.rglob("*") if p.is_file()}
    out = tmp / "dry-run-out"
    args = ["route", str(tmp / "work" / "sources" / "bucket" / "faces.parquet"), str(out), "--dry-run"]
    args += ["--known", f"sorted={tmp / 'out' / 'refine' / 'sorted'}", "--ledger", str(swap / "ledger.json")]
    args += ["--quality", str(tmp / "work" / "sources" / "bucket" / "quality.parquet")]
    args += ["--refine-settings", '{"min_faces": 2, "min_short": 40, "min_blur": 0}']
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(args) == 0
    text = buf.getvalue()
    assert "routed to known identities" in text and "ledger:obama" in text, text
    assert "new identities that survive the gates" in text
    assert not out.exists()
    assert {p: p.stat().st_mtime_ns for p in swap.rglob("*") if p.is_file()} == before


def test_library_listing(library, capsys):
    tmp, *_ = library
    from facesets.cli import main

    assert main(["library", str(tmp / "out" / "facesets_swap_ready")]) == 0
    out = capsys.readouterr().out
    assert "alex_lacamoire" in out and "identities" in out and "_top30.fsz" in out


def test_eras_fold_into_the_library_after_the_identity_exists(library):
    tmp, *_ = library
    manifest = json.loads(_manifest_bytes(tmp))
    eras = [e for sec in ("facesets", "thin_eras") for e in manifest[sec] if e["kind"] == "era"]
    assert eras and all(e["provenance"]["parent"] == "obama" for e in eras), manifest
    nums = _numbers(manifest)
    assert all(e["number"] > nums["rose_leslie"] for e in eras)  # numbered past the identities
    for e in eras:
        assert (tmp / "out" / "facesets_swap_ready" / e["dir"] / f"{e['name']}.txt").exists()
