"""Curation decisions (facesets/decisions.py): parsing with line numbers, each action, undo, numbers, file edits."""

from __future__ import annotations

import hashlib
import multiprocessing
from pathlib import Path

import pytest

from facesets import decisions as D
from facesets import ledger as L


def key(photo: str, i: int = 0) -> str:
    return f"{hashlib.sha256(photo.encode()).hexdigest()}_{i}"


def member(photo: str, score: float = 0.5, source: str = "s") -> L.Member:
    return L.Member(
        source=source,
        sha256=hashlib.sha256(photo.encode()).hexdigest(),
        path=f"/p/{photo}.jpg",
        score=score,
        crop=f".faces/{key(photo)}.png",
    )


def ident(number: int, photos: list[str], name: str | None = None) -> L.Identity:
    return L.Identity(
        number=number,
        name=name or L.discovered_name(number),
        kind="discovered",
        sources=["s"],
        members={key(p): member(p, 0.9 - 0.01 * i) for i, p in enumerate(photos)},
    )


@pytest.fixture
def ledger() -> L.Ledger:
    led = L.Ledger([ident(1, ["a1", "a2", "a3"]), ident(2, ["b1", "b2"]), ident(3, ["c1", "c2", "c3", "c4"])])
    led.curation = {
        "faces": {key("x1"): {"source": "s", "sha256": "x1sha", "path": "/p/x1.jpg", "score": 0.7, "crop": "f"}},
        "candidates": {key("x1"): {"identity": 2, "distance": 0.4, "score": 0.7}},
    }
    return led


def text(*items: str) -> str:
    return "version: 1\ndecisions:\n" + "".join(f"  - {i}\n" for i in items)


def parse(*items: str) -> list[D.Decision]:
    return D.parse(text(*items), "decisions.yaml")


def test_parse_keeps_lines_and_fields():
    ds = parse("{action: name, identity: 1, name: alice}", "{action: merge, identity: 1, from: 2}")
    assert [(d.action, d.line, d.where) for d in ds] == [
        ("name", 3, "decisions.yaml:3"),
        ("merge", 4, "decisions.yaml:4"),
    ]
    assert ds[1].other == 2 and ds[0].name == "alice"


@pytest.mark.parametrize(
    ("item", "line", "words"),
    [
        ("{action: rename, identity: 1}", 4, "'rename' is not one of"),
        ("{action: name, identity: 1}", 4, "'name' is a required property"),
        ("{action: name, identity: 1, name: _x}", 4, "not a folder-safe name"),
        ("{action: name, identity: 1, name: faceset_007}", 4, "not a folder-safe name"),
        ("{action: reject, identity: 1, faces: [abc]}", 4, "not a face key"),
        ("{action: hide, identity: 1, faces: [abc]}", 4, "unknown key 'faces'"),
    ],
)
def test_schema_errors_name_the_line(item, line, words):
    with pytest.raises(D.DecisionError) as exc:
        parse("{action: hide, identity: 3}", item)
    assert f"decisions.yaml:{line}:" in str(exc.value) and words in str(exc.value)


def test_bad_yaml_names_the_line():
    with pytest.raises(D.DecisionError, match=r"decisions.yaml:3: not valid YAML"):
        D.parse(
            "version: 1\ndecisions:\n  - {action: hide, identity: 1}}\n  - {action: hide, identity: 2}\n",
            "decisions.yaml",
        )


def test_missing_or_empty_file_is_no_decisions(tmp_path):
    assert D.load(tmp_path / "nope.yaml") == []
    assert D.parse("", "d.yaml") == [] and D.parse("version: 1\ndecisions:\n", "d.yaml") == []


def test_unknown_identity_and_face_stop_with_the_line(ledger):
    with pytest.raises(D.DecisionError, match=r"decisions.yaml:4: identity 9: the library has no identity"):
        D.apply(ledger, parse("{action: hide, identity: 1}", "{action: hide, identity: 9}"))
    with pytest.raises(D.DecisionError, match=r"decisions.yaml:3: identity 'bob'"):
        D.apply(ledger, parse("{action: hide, identity: bob}"))
    with pytest.raises(D.DecisionError, match=r"decisions.yaml:3: face .* is not a face of this library"):
        D.apply(ledger, parse(f"{{action: reject, identity: 1, faces: [{key('zz')}]}}"))
    with pytest.raises(D.DecisionError, match=r"decisions.yaml:4: identity 2 was merged into 1"):
        D.apply(ledger, parse("{action: merge, identity: 1, from: 2}", "{action: name, identity: 2, name: b}"))


def test_no_decisions_is_the_ledger(ledger):
    v = D.apply(ledger, [])
    assert {n: (i.name, set(i.members)) for n, i in v.identities.items()} == {
        i.number: (i.name, set(i.members)) for i in ledger.identities
    }
    assert v.candidates[2][0]["face_key"] == key("x1")


def test_name_keeps_the_number_and_refers_by_new_name(ledger):
    v = D.apply(ledger, parse("{action: name, identity: 1, name: alice}", "{action: hide, identity: alice}"))
    assert v.identities[1].name == "alice" and v.hidden == {1}
    assert ledger.by_number(1).name == "faceset_001"  # the ledger itself is not changed
    with pytest.raises(D.DecisionError, match="already given to identity 1"):
        D.apply(ledger, parse("{action: name, identity: 1, name: al}", "{action: name, identity: 2, name: al}"))


def test_merge_retires_the_number_and_keeps_one_face_per_photo(ledger):
    ledger.identities[1].members[key("a1", 1)] = member("a1")  # same photo as a face of #1
    v = D.apply(ledger, parse("{action: merge, identity: 1, from: 2}"))
    assert 2 not in v.identities and v.retired == {2: 1}
    assert set(v.identities[1].members) == {key(p) for p in ["a1", "a2", "a3", "b1", "b2"]}
    assert v.applied[0]["skipped"] == {key("a1", 1): "its photo already has a face in the identity"}
    assert v.candidates[1][0]["face_key"] == key("x1")  # #2's candidates follow it
    assert D.manifest_extra(v, ledger, 30)["retired"] == [{"number": 2, "name": "faceset_002", "merged_into": 1}]


def test_split_gets_a_reserved_number_that_is_never_reused(ledger):
    ds = parse(f"{{action: split, identity: 3, faces: [{key('c3')}, {key('c4')}], name: dora}}")
    v = D.apply(ledger, ds)
    assert v.identities[4].name == "dora" and set(v.identities[4].members) == {key("c3"), key("c4")}
    assert set(v.identities[3].members) == {key("c1"), key("c2")}
    ledger.curation["reserved"] = v.reserved
    assert ledger.next_number() == 5  # a new discovered identity never takes the split's number
    again = D.apply(ledger, ds)
    assert set(again.identities) == {1, 2, 3, 4}  # the same split gets the same number back
    undone = D.apply(ledger, [])
    assert 4 not in undone.identities and len(undone.identities[3].members) == 4
    ledger.curation["reserved"] = undone.reserved
    assert ledger.next_number() == 5  # still reserved after the undo


def test_reject_is_never_offered_again(ledger):
    v = D.apply(ledger, parse(f"{{action: reject, identity: 2, faces: [{key('b1')}, {key('x1')}]}}"))
    assert set(v.identities[2].members) == {key("b2")}
    assert 2 not in v.candidates  # the rejected candidate is not offered
    # the workflow later adds the rejected face to #2 (routing, a grown export): still not in the view
    ledger.identities[1].members[key("x1")] = member("x1")
    v = D.apply(ledger, parse(f"{{action: reject, identity: 2, faces: [{key('b1')}, {key('x1')}]}}"))
    assert key("x1") not in v.identities[2].members


def test_accept_candidate_and_face_of_another_identity(ledger):
    v = D.apply(ledger, parse(f"{{action: accept, identity: 2, faces: [{key('x1')}, {key('a3')}]}}"))
    assert {key("x1"), key("a3")} <= set(v.identities[2].members)
    assert key("a3") not in v.identities[1].members
    assert v.candidates == {}


def test_no_export_drops_the_face_everywhere(ledger):
    v = D.apply(
        ledger,
        parse(f"{{action: no_export, faces: [{key('c1')}]}}", f"{{action: accept, identity: 1, faces: [{key('c1')}]}}"),
    )
    assert all(key("c1") not in i.members for i in v.identities.values())


def test_hidden_identity_is_not_in_the_library(ledger):
    v = D.apply(ledger, parse("{action: hide, identity: 3}"))
    assert [i.number for i in v.library()] == [1, 2]
    assert D.manifest_extra(v, ledger, 30)["hidden"] == [{"number": 3, "name": "faceset_003", "faces": 4}]


def test_decided_name_wins_over_a_later_workflow_name(ledger):
    ledger.identities.append(ident(5, ["e1"], name="alice"))  # e.g. a hand-sorted folder arrives later
    v = D.apply(ledger, parse("{action: name, identity: 1, name: alice}"))
    assert v.identities[1].name == "alice" and v.identities[5].name == "alice_2"


def test_apply_is_pure_and_repeatable(ledger):
    ds = parse(
        "{action: name, identity: 1, name: alice}",
        "{action: merge, identity: 1, from: 2}",
        f"{{action: split, identity: 3, faces: [{key('c4')}]}}",
    )
    before = L.to_json(ledger)
    a, b = D.apply(ledger, ds), D.apply(ledger, ds)
    assert L.to_json(ledger) == before
    assert {n: set(i.members) for n, i in a.identities.items()} == {n: set(i.members) for n, i in b.identities.items()}
    assert a.applied == b.applied


def test_ledger_round_trips_curation(ledger):
    ledger.curation["reserved"] = {"split:3:x": 7}
    back = L.from_json(L.to_json(ledger))
    assert back.curation == ledger.curation and back.next_number() == 8
    assert "curation" not in L.to_json(L.Ledger([ident(1, ["a"])]))  # ledgers without curation are unchanged


# ---------------------------------------------------------------------------- editing the file


def test_append_keeps_comments_and_remove_undoes(tmp_path):
    f = tmp_path / "decisions.yaml"
    f.write_text("# mine\nversion: 1\ndecisions:\n  # first\n  - {action: hide, identity: 3}\n")
    D.append(f, {"action": "name", "identity": 1, "name": "alice"}, lambda ds: None)
    assert f.read_text().startswith("# mine\nversion: 1\ndecisions:\n  # first\n")
    assert [d.as_dict() for d in D.load(f)] == [
        {"action": "hide", "identity": 3},
        {"action": "name", "identity": 1, "name": "alice"},
    ]
    D.remove(f, 0, {"action": "hide", "identity": 3}, lambda ds: None)
    assert [d.as_dict() for d in D.load(f)] == [{"action": "name", "identity": 1, "name": "alice"}]
    assert "# mine" in f.read_text()
    with pytest.raises(D.DecisionError, match="changed meanwhile"):
        D.remove(f, 0, {"action": "hide", "identity": 3}, lambda ds: None)


def test_new_file_and_refused_change_writes_nothing(tmp_path):
    f = tmp_path / "cfg" / "decisions.yaml"
    D.append(f, {"action": "hide", "identity": 2}, lambda ds: None)
    before = f.read_bytes()

    def refuse(ds):
        raise D.DecisionError("no")

    with pytest.raises(D.DecisionError):
        D.append(f, {"action": "hide", "identity": 1}, refuse)
    assert f.read_bytes() == before
    f.write_text("version: 1\ndecisions: [{action: nope}]\n")
    broken = f.read_bytes()
    with pytest.raises(D.DecisionError, match=r"decisions\.yaml:2"):
        D.append(f, {"action": "hide", "identity": 1}, lambda ds: None)
    assert f.read_bytes() == broken  # a broken file is never overwritten


def _append_many(args: tuple[str, int]) -> None:
    path, start = args
    for n in range(start, start + 10):
        D.append(Path(path), {"action": "hide", "identity": n}, lambda ds: None)


def test_concurrent_writers_lose_nothing(tmp_path):
    f = tmp_path / "decisions.yaml"
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pool.map(_append_many, [(str(f), s) for s in (1, 101, 201, 301)])
    got = sorted(d.identity for d in D.load(f))
    assert got == sorted(n for s in (1, 101, 201, 301) for n in range(s, s + 10))


def test_pending_lists_new_and_undone(ledger):
    ds = parse("{action: hide, identity: 3}", "{action: name, identity: 1, name: alice}")
    ledger.curation["decisions"] = {
        "applied": [{"action": "hide", "identity": 2}, {"action": "hide", "identity": 3, "line": 3}]
    }
    p = D.pending(ledger, ds)
    assert p["new"] == [{"action": "name", "identity": 1, "name": "alice", "index": 1}]
    assert p["undone"] == [{"action": "hide", "identity": 2}] and not p["reordered"]
    ledger.curation["decisions"]["applied"] = [d.as_dict() for d in reversed(ds)]
    assert D.pending(ledger, ds) == {"new": [], "undone": [], "reordered": True}
    ledger.curation["decisions"]["applied"] = [d.as_dict() for d in ds]
    assert D.pending(ledger, ds) == {"new": [], "undone": [], "reordered": False}


def test_a_candidate_from_a_photo_the_identity_has_is_not_offered(ledger):
    sha = ledger.identities[1].members[key("b1")].sha256
    ledger.curation["faces"][key("b1", 3)] = {
        "source": "s",
        "sha256": sha,
        "path": "/p/b1.jpg",
        "score": 0.9,
        "crop": "f",
    }
    ledger.curation["candidates"][key("b1", 3)] = {"identity": 2, "distance": 0.3, "score": 0.9}
    v = D.apply(ledger, [])
    assert [c["face_key"] for c in v.candidates[2]] == [key("x1")]


# ---------------------------------------------------------------------------- the merge's side


def test_curate_keeps_crops_records_and_prune_follows_the_view(tmp_path, ledger):
    lib, export = tmp_path / "lib", tmp_path / "export"
    export.mkdir()
    for ident in ledger.identities:
        for k, m in ident.members.items():
            (export / f"{k}.png").write_bytes(k.encode())
            m.crop = str(export / f"{k}.png")  # a new member points at its export
    (export / "cand.png").write_bytes(b"candidate")
    ledger.curation = {}
    ledger.batches = {"s": {"entries": {"set_b": 2}}}
    manifest = {
        "candidates": [{"face_key": key("x1"), "file": "cand.png", "nearest": "set_b", "sha256": "x1sha", "score": 0.7}]
    }
    f = tmp_path / "decisions.yaml"
    f.write_text(text("{action: name, identity: 1, name: alice}", "{action: hide, identity: 3}"))
    view = D.curate(ledger, [("s", export, manifest)], lib, f)
    assert (lib / ".faces" / f"{key('x1')}.png").read_bytes() == b"candidate"
    assert all(
        m.crop == f".faces/{k}.png" and (lib / m.crop).read_bytes() == k.encode()
        for i in ledger.identities
        for k, m in i.members.items()
    )
    assert ledger.by_number(1).name == "faceset_001" and ledger.curation["names"] == {"1": "alice"}
    assert ledger.by_name("alice") is ledger.by_number(1)  # eras.identities may use a decided name
    assert [r["line"] for r in ledger.curation["decisions"]["applied"]] == [3, 4]
    assert view.candidates[2][0]["face_key"] == key("x1")
    # folders as a build would leave them: one stale (renamed), one hidden, one crop too many
    built = view.library()
    for name in ("faceset_001", "faceset_003", "alice", "faceset_002"):
        (lib / name / "crops").mkdir(parents=True)
        (lib / name / "manifest.json").write_text('{"number": 0}')
    for ident in built:
        for k in ident.members:
            (lib / ident.name / "crops" / f"{k}.png").write_bytes(k.encode())
    (lib / "faceset_002" / "crops" / f"{key('zz')}.png").write_bytes(b"old")
    removed = D.prune(lib, built, lambda i: i.name)
    assert sorted(removed) == ["faceset_001", "faceset_003"]
    assert {p.stem for p in (lib / "faceset_002" / "crops").glob("*.png")} == set(ledger.by_number(2).members)
    k = key("b1")
    assert (lib / "faceset_002" / "crops" / f"{k}.png").samefile(lib / ".faces" / f"{k}.png")  # linked, not copied
