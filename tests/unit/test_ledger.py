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


def test_hand_sorted_identities_match_by_label_and_never_absorb_discovered_ones():
    led = L.Ledger()
    merge(led, proposal("found", "faceset_001", 0, ["a1_0"]), embeddings(["a1_0"], 0))
    hs = proposal("sorted", "alice", 0, ["a2_0", "a3_0"], kind="identities", label="alice")
    ch = merge(led, hs, embeddings(["a2_0", "a3_0"], 0))
    assert ch.created and ch.number == 2 and ch.name == "alice"
    assert led.by_number(2).kind == "identities"
    again = proposal("sorted", "alice", 0, ["a2_0", "a3_0", "a4_0"], kind="identities", label="alice")
    assert merge(led, again, embeddings(["a4_0"], 0)).number == 2


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
    # An identity-kind proposal never matches a discovered one; with every face owned it makes nothing.
    hs = proposal("u", "carol", 5, ["a1_0"], kind="identities", label="carol")
    assert merge(led, hs, {}) is None
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
