"""Route's rerun trigger (#12 follow-up): a state file of the ledger's identities as routing one
mixed source uses them (number, name, kind, faces from other sources), rewritten when an identity
comes, goes or is renamed, or other sources' faces of one change materially, and left alone by
the source's own routed faces."""

from __future__ import annotations

import os

from facesets import ledger as L
from facesets.library import ROUTE_MEMBER_DRIFT, routing_state, same_routing
from facesets.triggers import state_file_unless_same

MODEL = "opencv-yunet-sface-2021dec-test"


def _ident(number: int, name: str, kind: str, faces: dict[str, int]) -> L.Identity:
    """An identity with ``faces[source]`` members from each source."""
    members = {
        f"{src}_{k}": L.Member(source=src, sha256=f"{src}{k}", path=f"/p/{src}/{k}.jpg", score=1.0, crop="c.png")
        for src, n in faces.items()
        for k in range(n)
    }
    total = sum(faces.values())
    return L.Identity(
        number=number,
        name=name,
        kind=kind,
        members=members,
        centroid_sum={MODEL: [float(total), 0.0]},
        centroid_count={MODEL: total},
    )


def _ledger(path, *idents: L.Identity) -> None:
    L.save(L.Ledger(identities=list(idents)), path)


def _state(path, source: str = "bucket") -> dict:
    return routing_state(path, source)


def _touch_old(path) -> float:
    os.utime(path, (1_000_000, 1_000_000))
    return os.stat(path).st_mtime


def test_the_state_is_the_identities_routing_reads_with_other_sources_faces(tmp_path):
    led = tmp_path / "ledger.json"
    assert _state(led) == {"identities": []}  # no library yet
    _ledger(
        led,
        _ident(2, "obama", "identities", {"sorted": 3, "bucket": 2}),
        _ident(1, "faceset_001", "discovered", {"bucket": 2}),
        _ident(3, "obama_era1", "era", {"sorted": 3}),
    )
    assert _state(led)["identities"] == [
        {"number": 1, "name": "faceset_001", "kind": "discovered", "others": 0},
        {"number": 2, "name": "obama", "kind": "identities", "others": 3},
    ]
    assert _state(led, "sorted")["identities"][1]["others"] == 2


def test_own_faces_and_small_drift_do_not_reroute_new_renamed_or_grown_identities_do(tmp_path):
    led = tmp_path / "ledger.json"
    big = round(2 / ROUTE_MEMBER_DRIFT)  # 40 faces: 2 more is within the drift
    _ledger(led, _ident(1, "faceset_001", "discovered", {"misc": 2}), _ident(2, "b", "discovered", {"misc": big}))
    base = _state(led)
    _ledger(
        led,
        _ident(1, "faceset_001", "discovered", {"misc": 2, "bucket": 5}),  # the source's own faces
        _ident(2, "b", "discovered", {"misc": big + 2}),
    )
    assert same_routing(base, _state(led))
    _ledger(led, _ident(1, "faceset_001", "discovered", {"misc": 3}), _ident(2, "b", "discovered", {"misc": big}))
    assert not same_routing(base, _state(led))  # one more face of another source in a 2-face identity
    _ledger(led, _ident(1, "faceset_001", "discovered", {"misc": 2}), _ident(2, "b", "discovered", {"misc": big + 3}))
    assert not same_routing(base, _state(led))
    _ledger(led, _ident(1, "obama", "identities", {"misc": 2}), _ident(2, "b", "discovered", {"misc": big}))
    assert not same_routing(base, _state(led))  # a label named it
    _ledger(
        led,
        _ident(1, "faceset_001", "discovered", {"misc": 2}),
        _ident(2, "b", "discovered", {"misc": big}),
        _ident(3, "x", "identities", {"sorted": 1}),
    )
    assert not same_routing(base, _state(led))
    assert not same_routing({**base, "schema_version": 1}, {**base, "schema_version": 2})


def test_the_state_file_keeps_the_state_it_last_saw_so_drift_adds_up(tmp_path):
    led, state = tmp_path / "ledger.json", tmp_path / "state" / "route.json"
    big = 40
    _ledger(led, _ident(1, "a", "discovered", {"misc": big}))
    state_file_unless_same(state, _state(led), same_routing)
    rewrites = []
    for grown in (1, 2, 3, 4):  # four merges adding one face each: rewritten once the sum is > 5 %
        t0 = _touch_old(state)
        _ledger(led, _ident(1, "a", "discovered", {"misc": big + grown}))
        state_file_unless_same(state, _state(led), same_routing)
        rewrites.append(os.stat(state).st_mtime != t0)
    assert rewrites == [False, False, True, False]
    t1 = _touch_old(state)  # the same ledger again: nothing is rewritten (the next run converges)
    state_file_unless_same(state, _state(led), same_routing)
    assert os.stat(state).st_mtime == t1


def test_a_state_file_that_does_not_parse_is_rewritten(tmp_path):
    led, state = tmp_path / "ledger.json", tmp_path / "route.json"
    _ledger(led, _ident(1, "a", "discovered", {"misc": 1}))
    state.write_text("{not json")
    state_file_unless_same(state, _state(led), same_routing)
    assert '"name": "a"' in state.read_text()
