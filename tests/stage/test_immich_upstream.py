"""The Immich stage against the server as it really is (issue 15): external libraries, late
face detection, both search API shapes (v2.7 .. v4), listings that change while they are
taken, and a server that echoes the API key. Each run must stage exactly what a correct
client stages, recomputed from the fake server's library alone."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from facesets.atomic import write_json
from facesets.immich.stage import format_report, stage_immich
from tests.conftest import DEV_FACES
from tests.stage.test_immich_stage import clients_for, expected_staged, options, staged
from tests.support.fake_immich import FakeAsset, FakeImmich, Fault, assets_for_tests, default_users


@pytest.fixture(scope="module")
def library(opencv_analyzer, demo_photos):
    return assets_for_tests(opencv_analyzer, demo_photos, DEV_FACES)


def with_external(library: list[FakeAsset], every: int = 3) -> list[FakeAsset]:
    """Every ``every``-th image asset moved into an external library (path checksum)."""
    out, k = [], 0
    for a in library:
        if a.type == "IMAGE" and a.checksum_override is None:
            k += 1
            if k % every == 0:
                a = dataclasses.replace(a, library="nas")
        out.append(a)
    return out


def staged_bytes(root) -> list[str]:
    """sha256 of every staged file (content identity, independent of which copy won)."""
    return sorted(sha for _, sha in staged(root).values())


def expected_bytes(assets: list[FakeAsset], min_short: float = 90) -> list[str]:
    """What a correct client stages: the byte-level result of the path-independent rules.
    A path checksum splits byte-identical copies into separate groups, which the sha256
    dedup joins again, so the staged content is the same as with content checksums."""
    plain = [dataclasses.replace(a, library=None) for a in assets]
    by_id = {a.id: a for a in plain}
    return sorted({hashlib.sha256(by_id[i].data).hexdigest() for i in expected_staged(plain, min_short)})


@pytest.mark.parametrize("version", ["2.7", "3", "3.2", "4"])
def test_external_library_assets_are_staged_on_every_server_version(library, tmp_path, version):
    lib = with_external(library)
    external = [a for a in lib if a.library]
    assert len(external) > 10
    root = tmp_path / "ext"
    with FakeImmich(lib, default_users(), version=version) as srv:
        rep = stage_immich(clients_for(srv), options(), root)
        assert srv.violations == []  # v4: no flat field was sent; v2.7: no filter tree
        searches = [r for r in srv.requests_to("/search/metadata")]
        downloads = srv.downloads()
    bad = {a.id for a in lib if a.checksum_override}  # the one asset whose checksum never matches
    assert rep.outcome == "complete" and rep.errors == len(bad) == 1, format_report(rep)
    assert all(e.split(":")[0] in bad for e in rep.error_samples)
    assert staged_bytes(root) == expected_bytes(lib)
    assert rep.search_api == ("filter" if version in ("3.2", "4") else "flat")
    assert rep.external_verified_now >= 1
    ext_ids = {a.id for a in external}
    assert all(n == 1 for aid, n in downloads.items() if aid in ext_ids)  # verified once, not three times
    assert rep.listing_passes == 2 and rep.listing_gap == 0 and len(searches) >= 2 * 2 * 2
    # the second run adopts nothing new and downloads nothing
    with FakeImmich(lib, default_users(), version=version) as srv:
        again = stage_immich(clients_for(srv), options(), root)
        assert set(srv.downloads()) == bad  # only the error is tried again
    assert again.outcome == "complete" and again.staged_now == 0 and again.errors == 1


def test_external_file_on_disk_after_a_lost_state_is_adopted(library, tmp_path):
    lib = with_external(library)
    root = tmp_path / "adopt"
    with FakeImmich(lib, default_users()) as srv:
        stage_immich(clients_for(srv), options(), root)
    (root / "state.json").unlink()  # a crash lost every state write
    with FakeImmich(lib, default_users()) as srv:
        rep = stage_immich(clients_for(srv), options(), root)
        downloads = srv.downloads()
    ext = {a.id for a in lib if a.library}
    assert rep.adopted_now >= 1 and not (set(downloads) & ext & set(staged(root)))
    assert staged_bytes(root) == expected_bytes(lib)


def test_late_face_detection_is_picked_up_when_updated_at_moves(library, tmp_path):
    lib, late = [], []
    for i, a in enumerate(library):
        if a.type == "IMAGE" and a.faces and i % 4 == 1:
            a = dataclasses.replace(a, faces_late=True)
            late.append(a.id)
        lib.append(a)
    root = tmp_path / "late"
    with FakeImmich(lib, default_users()) as srv:
        first = stage_immich(clients_for(srv), options(), root)
        early = set(staged(root))
        assert early and not (early & set(late)) and first.no_face >= len(set(late) & expected_staged(lib))
        srv.detect_late()  # Immich's face job ran: faces appear, updatedAt moves
        second = stage_immich(clients_for(srv), options(), root)
        faces_calls = len(srv.requests_to("/api/faces"))
    assert second.rechecked_now >= len(set(late) & expected_staged(lib)) > 0
    assert set(staged(root)) == expected_staged(lib) and second.outcome == "complete"
    assert faces_calls < 2 * len(lib)  # assets already decided were not asked again


def test_no_face_is_asked_again_on_request_and_when_min_face_short_changes(library, tmp_path):
    lib = [dataclasses.replace(a, faces_late=a.type == "IMAGE" and i % 3 == 0) for i, a in enumerate(library)]
    root = tmp_path / "req"
    with FakeImmich(lib, default_users()) as srv:
        stage_immich(clients_for(srv), options(), root)
        for a in srv.assets:  # faces appear, but this Immich does not move updatedAt
            a.faces_late = False
        same = stage_immich(clients_for(srv), options(), root)
        assert same.rechecked_now == 0  # nothing says the grounds changed
        asked = stage_immich(clients_for(srv), options(recheck_no_face=True), root)
    assert asked.rechecked_now > 0 and set(staged(root)) == expected_staged(lib)

    big = tmp_path / "big"
    with FakeImmich(library, default_users()) as srv:
        strict = stage_immich(clients_for(srv), options(min_face_short=400), big)
        assert strict.no_big_face > 0
        relaxed = stage_immich(clients_for(srv), options(min_face_short=90), big)
    assert relaxed.rechecked_now >= strict.no_big_face
    assert set(staged(big)) == expected_staged(library)


def alice_timeline(lib: list[FakeAsset]) -> list[FakeAsset]:
    """What alice's key lists for visibility timeline, in the server's order (newest first)."""
    items = [
        a
        for a in lib
        if a.type == "IMAGE" and a.visibility == "timeline" and not a.is_trashed and a.owner in ("alice", "bob")
    ]
    return sorted(items, key=lambda a: (a.created, a.id), reverse=True)


@pytest.mark.parametrize("version", ["3", "3.2"])
def test_a_change_in_the_middle_of_the_listing_loses_nothing(library, tmp_path, version):
    order = alice_timeline(library)
    gone, skipped_by_offset = order[0], order[5]
    root = tmp_path / "mid"
    with FakeImmich(library, default_users(), version=version) as srv:
        srv.on_search(1, lambda s: s.remove(gone.id))  # deleted right after page 1 was served
        rep = stage_immich(clients_for(srv, users=("alice",)), options(page_size=5, visibility=("timeline",)), root)
        assert srv.violations == []
    rest = [a for a in order if a.id != gone.id]
    want = expected_staged(rest)
    assert skipped_by_offset.id in want  # the asset offset paging loses is one that must be staged
    assert set(staged(root)) == want, format_report(rep)
    assert rep.listing_gap == 0
    if version == "3":
        assert rep.listing_late == 1  # only the second pass saw it
    else:
        assert rep.listing_late == 0  # the cursor does not shift


def test_a_listing_that_keeps_changing_reports_a_gap(library, tmp_path):
    order = alice_timeline(library)
    keep = order[:20]
    extra = [
        dataclasses.replace(a, id=f"{a.id[:-4]}{k:04d}", created="2000-01-01T00:00:00.000Z")  # oldest: listed last
        for k, a in enumerate(order[20:23])
    ]
    root = tmp_path / "gap"
    with FakeImmich(keep, default_users()) as srv:
        pages = -(-len(keep) // 5)

        def upload(k):
            def fn(s):
                s.assets.append(extra[k])
                s.by_id[extra[k].id] = extra[k]

            return fn

        srv.on_search(pages + 1, upload(0))  # a new upload during pass 2 (which sees it: a 5th page)
        srv.on_search(2 * pages + 2, upload(1))  # and another during pass 3
        rep = stage_immich(clients_for(srv, users=("alice",)), options(page_size=5, visibility=("timeline",)), root)
    text = format_report(rep)
    assert rep.listing_passes == 3 and rep.listing_gap >= 1 and "GAP" in text
    assert rep.outcome == "complete"


def test_a_key_echoed_by_the_server_is_never_stored(library, tmp_path):
    root = tmp_path / "echo"
    with FakeImmich(library, default_users()) as srv:
        srv.add_fault(Fault("echo_key", count=6, path="/api/faces"))
        rep = stage_immich(clients_for(srv), options(), root)
        keys = [u.key for u in srv.users.values()]
    write_json(root / "report.json", rep.to_dict())
    state = json.loads((root / "state.json").read_text())
    echoed = [r["last_error"] for r in state["assets"].values() if "Invalid request for key" in r.get("last_error", "")]
    assert len(echoed) == 6 and all("key ***" in e for e in echoed) and rep.errors >= 6
    for f in ("state.json", "report.json"):
        text = (root / f).read_text()
        assert not any(k in text for k in keys)
