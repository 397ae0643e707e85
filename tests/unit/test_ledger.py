"""The identity ledger: numbers never change, members never move, merges are idempotent."""

from __future__ import annotations

import json

import numpy as np
import pytest

from facesets import ledger as L

MODEL = "opencv-yunet-sface-test"
DIM = 16


def unit(v) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


def axis(i: int, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    v = np.zeros(DIM)
    v[i] = 1.0
    v += noise * np.random.default_rng(seed).normal(size=DIM)
    return unit(v)


def proposal(source, name, ax, keys, kind="discovered", label=None, route_to=None, photo=None):
    crops = [
        {"face_key": k, "sha256": photo or k.split("_")[0], "score": 0.5, "file": f"/x/{k}.png", "source_path": k}
        for k in keys
    ]
    return L.Proposal(source, name, kind, MODEL, axis(ax), crops, label=label, route_to=route_to)


def embeddings(keys, ax):
    return {k: axis(ax, 0.05, seed=i) for i, k in enumerate(keys)}


def merge(led, p, emb, thr=0.45, resolved=None):
    return L.apply(led, p, L.match(led, p, thr, resolved or {}), emb)


def test_new_identities_are_numbered_past_the_max_and_keep_their_numbers():
    led = L.Ledger()
    a = proposal("s1", "faceset_001", 0, ["a1_0", "a2_0"])
    b = proposal("s1", "faceset_002", 1, ["b1_0", "b2_0"])
    assert merge(led, a, embeddings(["a1_0", "a2_0"], 0)).number == 1
    assert merge(led, b, embeddings(["b1_0", "b2_0"], 1)).number == 2
    # A later source: the same person as #2 (new photos) joins #2, a stranger gets #3.
    b2 = proposal("s2", "faceset_001", 1, ["b3_0"])
    c = proposal("s2", "faceset_002", 2, ["c1_0"])
    ch = merge(led, b2, embeddings(["b3_0"], 1))
    assert (ch.number, ch.created, ch.added) == (2, False, ["b3_0"])
    assert merge(led, c, embeddings(["c1_0"], 2)).number == 3
    assert [i.name for i in led.identities] == ["faceset_001", "faceset_002", "faceset_003"]
    assert led.by_number(2).sources == ["s1", "s2"]


def test_applying_the_same_proposal_twice_changes_nothing():
    led = L.Ledger()
    keys = ["a1_0", "a2_0", "a3_0"]
    p = proposal("s1", "faceset_001", 0, keys)
    merge(led, p, embeddings(keys, 0))
    before = json.dumps(L.to_json(led), sort_keys=True)
    ch = merge(led, p, embeddings(keys, 0))
    assert ch.added == [] and not ch.created
    assert json.dumps(L.to_json(led), sort_keys=True) == before


def test_members_never_move_even_when_a_recluster_proposes_it():
    led = L.Ledger()
    merge(led, proposal("s1", "faceset_001", 0, ["a1_0", "a2_0"]), embeddings(["a1_0", "a2_0"], 0))
    merge(led, proposal("s1", "faceset_002", 1, ["b1_0", "b2_0"]), embeddings(["b1_0", "b2_0"], 1))
    # A recomputed source now lumps a1 with the b's: a1 stays in #1, the rest joins #2 by overlap.
    moved = proposal("s1", "faceset_001", 1, ["a1_0", "b1_0", "b2_0", "b3_0"])
    ch = merge(led, moved, embeddings(["a1_0", "b1_0", "b2_0", "b3_0"], 1))
    assert ch.number == 2 and ch.added == ["b3_0"]
    assert set(led.by_number(1).members) == {"a1_0", "a2_0"}


def test_a_hand_sorted_folder_names_the_discovered_identity_of_its_person():
    led = L.Ledger()
    merge(led, proposal("found", "faceset_001", 0, ["a1_0", "a2_0"]), embeddings(["a1_0", "a2_0"], 0))
    # Shares a face with #1: the label names #1, whose number stays; the old name is an alias.
    hs = proposal("sorted", "alice", 0, ["a2_0", "a3_0"], kind="identities", label="alice")
    ch = merge(led, hs, embeddings(["a2_0", "a3_0"], 0))
    assert (ch.number, ch.created, ch.name, ch.added) == (1, False, "alice", ["a3_0"])
    ident = led.by_number(1)
    assert (ident.kind, ident.label, ident.aliases) == ("identities", "alice", ["faceset_001"])
    assert led.by_name("faceset_001") is ident  # routes written before the rename still land here
    again = proposal("sorted", "alice", 0, ["a2_0", "a3_0", "a4_0"], kind="identities", label="alice")
    assert merge(led, again, embeddings(["a4_0"], 0)).number == 1
    assert len(led.identities) == 1


def test_a_label_names_by_centroid_when_no_face_is_shared():
    led = L.Ledger()
    merge(led, proposal("found", "faceset_001", 0, ["a1_0"]), embeddings(["a1_0"], 0))
    merge(led, proposal("found", "faceset_002", 1, ["b1_0"]), embeddings(["b1_0"], 1))
    hs = proposal("sorted", "bea", 1, ["b2_0"], kind="identities", label="bea")
    assert merge(led, hs, embeddings(["b2_0"], 1)).number == 2
    assert [(i.number, i.name) for i in led.identities] == [(1, "faceset_001"), (2, "bea")]


def _people(led, label_first: bool):
    sets = [
        proposal("sorted", "alice", 0, ["a1_0", "a2_0"], kind="identities", label="alice"),
        proposal("found", "faceset_001", 0, ["a2_0", "a3_0"]),
    ]
    for p in sets if label_first else sets[::-1]:
        merge(led, p, embeddings([c["face_key"] for c in p.crops], 0))
    return {(i.name, i.label, frozenset(i.members)) for i in led.identities}


def test_the_order_of_sources_never_changes_who_is_who():
    a, b = _people(L.Ledger(), True), _people(L.Ledger(), False)
    assert a == b == {("alice", "alice", frozenset({"a1_0", "a2_0", "a3_0"}))}


def test_two_labels_claiming_one_identity_are_reported_not_merged():
    led = L.Ledger()
    merge(led, proposal("s1", "alice", 0, ["a1_0"], kind="identities", label="alice"), embeddings(["a1_0"], 0))
    other = proposal("s2", "alicia", 0, ["a2_0"], kind="identities", label="alicia")
    number, notes = L.label_target(led, other, 0.45, led.owner())
    assert number is None and [n["kind"] for n in notes] == ["label_conflict"]
    assert "'alice'" in notes[0]["message"] and "'alicia'" in notes[0]["message"]
    assert L.apply(led, other, number, embeddings(["a2_0"], 0)).created
    assert sorted(i.label for i in led.identities) == ["alice", "alicia"]


def test_a_label_whose_faces_sit_in_two_identities_is_reported():
    led = L.Ledger()
    merge(led, proposal("f", "faceset_001", 0, ["a1_0", "a2_0"]), embeddings(["a1_0", "a2_0"], 0))
    merge(led, proposal("f", "faceset_002", 5, ["a3_0"]), embeddings(["a3_0"], 5))
    hs = proposal("sorted", "alice", 0, ["a1_0", "a2_0", "a3_0"], kind="identities", label="alice")
    owner = led.owner()
    number, notes = L.label_target(led, hs, 0.45, owner)
    assert number == 1 and notes == []
    L.apply(led, hs, number, {}, owner)
    split = L.label_split(led, hs, 1, owner)
    assert split is not None and split["also_in"] == {"2": 1}
    assert set(led.by_number(2).members) == {"a3_0"}  # reported, never moved


def test_eras_are_matched_by_name_never_by_centroid():
    led = L.Ledger()
    merge(led, proposal("s", "kid", 0, ["k1_0", "k2_0"], kind="identities", label="kid"), {})

    def era(name, keys):
        return L.Proposal("eras:kid", name, "era", MODEL, axis(0), proposal("x", "x", 0, keys).crops, parent="kid")

    for name, keys in (("kid_era1", ["k1_0"]), ("kid_era2", ["k2_0"])):
        p = era(name, keys)
        L.apply(led, p, L.match(led, p, 2.0, {}), {})  # a threshold every centroid passes
    assert [i.name for i in led.identities if i.kind == "era"] == ["kid_era1", "kid_era2"]
    again = era("kid_era2", ["k2_0"])
    assert L.match(led, again, 2.0, {}) == led.by_name("kid_era2").number


def test_relocate_records_the_new_path_of_a_sources_members():
    led = L.Ledger()
    merge(led, proposal("s", "faceset_001", 0, ["a1_0"]), embeddings(["a1_0"], 0))
    moved = [{"face_key": "a1_0", "source_path": "/new/root/a1.jpg"}]
    assert L.relocate(led, "other", moved) == 0
    assert L.relocate(led, "s", moved) == 1
    assert led.by_number(1).members["a1_0"].path == "/new/root/a1.jpg"


def test_routes_resolve_to_ledger_names_and_earlier_entries():
    led = L.Ledger()
    merge(led, proposal("sorted", "bob", 3, ["b1_0"], kind="identities", label="bob"), embeddings(["b1_0"], 3))
    r = proposal("mixed", "to_bob", 9, ["g1_1"], kind="routed", route_to="ledger:bob")
    assert merge(led, r, {}).number == 1
    r2 = proposal("mixed", "to_x", 9, ["g2_0"], kind="routed", route_to="sorted/bob")
    assert merge(led, r2, {}, resolved={"sorted/bob": 1}).number == 1
    assert set(led.by_number(1).members) == {"b1_0", "g1_1", "g2_0"}


def test_cannot_link_one_face_per_photo_per_identity():
    led = L.Ledger()
    merge(led, proposal("s", "faceset_001", 0, ["p1_0"]), embeddings(["p1_0"], 0))
    other_face_same_photo = proposal("t", "faceset_001", 0, ["p1_1"], photo="p1")
    assert merge(led, other_face_same_photo, embeddings(["p1_1"], 0)).added == []


def test_a_proposal_whose_faces_all_belong_elsewhere_creates_nothing():
    led = L.Ledger()
    merge(led, proposal("s", "faceset_001", 0, ["a1_0", "a2_0"]), embeddings(["a1_0", "a2_0"], 0))
    far = proposal("t", "faceset_001", 5, ["a1_0", "a2_0"])  # a far centroid, but owned faces
    ch = merge(led, far, {})
    assert (ch.number, ch.added) == (1, [])
    # A hand-sorted folder whose faces are all owned names their identity instead of making one.
    hs = proposal("u", "carol", 5, ["a1_0"], kind="identities", label="carol")
    ch = merge(led, hs, {})
    assert (ch.number, ch.name, ch.added) == (1, "carol", [])
    assert len(led.identities) == 1


def test_centroid_follows_members_and_round_trips(tmp_path):
    led = L.Ledger()
    keys = ["a1_0", "a2_0"]
    merge(led, proposal("s", "faceset_001", 0, keys), embeddings(keys, 0))
    c = led.by_number(1).centroid(MODEL)
    assert c is not None and float(c @ axis(0)) > 0.95
    assert led.by_number(1).centroid("another-model") is None
    path = tmp_path / "ledger.json"
    L.save(led, path)
    back = L.load(path)
    assert L.to_json(back) == L.to_json(led)


def test_corrupt_ledger_names_the_file_and_the_backup(tmp_path):
    path = tmp_path / "ledger.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"ledger.json.*\.backup"):
        L.load(path)


def test_backup_keeps_the_newest(tmp_path):
    f = tmp_path / "manifest.json"
    for i in range(5):
        f.write_text(str(i))
        L.backup([f], keep=3)
    kept = sorted((tmp_path / ".backup").iterdir())
    assert len(kept) == 3
    assert (kept[-1] / "manifest.json").read_text() == "4"


def test_backups_are_atomic_and_half_written_ones_are_cleaned(tmp_path):
    f = tmp_path / "ledger.json"
    f.write_text("{}")
    dest = L.backup([f], keep=3)
    assert dest is not None and json.loads((dest / "ledger.json").read_text()) == {}
    root = tmp_path / ".backup"
    assert not [d for d in root.iterdir() if d.name.startswith(".tmp-")]
    (root / ".tmp-20260101T000000-1").mkdir()  # a crash during a copy
    (root / "20260101T000000-2").mkdir()
    (root / "20260101T000000-2" / "ledger.json").write_text('{"ident')  # truncated by an older version
    gone = L.clean_backups(tmp_path)
    assert sorted(p.name for p in gone) == [".tmp-20260101T000000-1", "20260101T000000-2"]
    assert [d.name for d in root.iterdir()] == [dest.name]
