"""The Immich stage pipeline (in process) against the local Immich with real photos."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image, ImageOps

from facesets.immich.client import CircuitBreaker, ClientStats, ImmichClient, client_options
from facesets.immich.stage import StageOptions, format_report, stage_immich, stage_options
from facesets.store import FaceStore
from tests.conftest import DEV_FACES
from tests.support.fake_immich import (
    FakeAsset,
    FakeImmich,
    Fault,
    assets_for_tests,
    default_users,
)

INCLUDE = ("**/*.jpg", "**/*.jpeg", "**/*.png")
EXCLUDE = ("**/@eaDir/**", "**/thumbs/**", "**/encoded-video/**")


@pytest.fixture(scope="module")
def library(opencv_analyzer, demo_photos):
    return assets_for_tests(opencv_analyzer, demo_photos, DEV_FACES)


def clients_for(srv: FakeImmich, users=("alice", "bob"), **over) -> list[ImmichClient]:
    opts = client_options(None, **{"timeout_s": 3.0, "backoff_s": 0.01, "retries": 4, **over})
    br, st = CircuitBreaker(opts.breaker_errors), ClientStats()
    return [ImmichClient(srv.url, srv.users[u].key, f"IMMICH_KEY_{u.upper()}", opts, br, st) for u in users]


def options(**over) -> StageOptions:
    """The schema's immich settings, the test globs, a short state interval; ``over`` sets fields."""
    label = over.pop("label", "fam")
    return stage_options(label, None, INCLUDE, EXCLUDE, **{"state_interval_s": 0.05, **over})


def oriented(a: FakeAsset) -> tuple[int, int]:
    with Image.open(io.BytesIO(a.data)) as im:
        return ImageOps.exif_transpose(im).size


def expected_staged(assets: list[FakeAsset], min_short: float = 90) -> set[str]:
    """Recomputed from the library alone: which assets must end up staged (ids)."""
    from facesets.globs import selected

    cands = []
    for a in assets:
        rel = "/".join(p for p in a.original_path.replace("\\", "/").split("/") if p not in ("", ".", ".."))
        if a.type != "IMAGE" or a.visibility not in ("timeline", "archive") or a.is_trashed or a.is_offline:
            continue
        if not selected(rel, INCLUDE, EXCLUDE):
            continue
        cands.append(a)
    groups: dict[str, list[FakeAsset]] = {}
    for a in cands:
        groups.setdefault(a.checksum, []).append(a)
    out = set()
    for members in groups.values():
        win = min(members, key=lambda a: (a.original_path, a.id))
        if win.checksum_override:
            continue
        w, h = oriented(win)
        pw, ph = win.preview
        short = max((min((f[2] - f[0]) * w / pw, (f[3] - f[1]) * h / ph) for f in win.faces), default=0)
        if short >= min_short:
            out.add(win.id)
    return out


def staged(root: Path) -> dict[str, tuple[str, str]]:
    state = json.loads((root / "state.json").read_text())
    return {aid: (r["path"], r["sha256"]) for aid, r in state["assets"].items() if r["status"] == "staged"}


def all_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_full_staging_matches_the_library(library, tmp_path):
    root = tmp_path / "immich" / "fam"
    with FakeImmich(library, default_users()) as srv:
        report = stage_immich(clients_for(srv), options(), root)
        assert srv.violations == []
        log = list(srv.log)
    by_id = {a.id: a for a in library}
    want = expected_staged(library)
    got = staged(root)
    assert report.outcome == "complete" and set(got) == want and report.staged == len(want) > 20
    assert report.state_writes >= 3  # after the enumeration, during the run, at the end
    for aid, (rel, sha) in got.items():  # bytes identical, under the folder, sha256 recorded
        data = (root / "files" / rel).read_bytes()
        assert data == by_id[aid].data and hashlib.sha256(data).hexdigest() == sha
    files = all_files(tmp_path)
    assert {f"immich/fam/files/{r}" for r, _ in got.values()} | {"immich/fam/state.json"} == files
    assert not list(Path("/tmp").glob("facesets-escape-*")) and not Path("/etc/facesets-escape-2.jpg").exists()

    state = json.loads((root / "state.json").read_text())["assets"]
    reason = {aid: r.get("reason") for aid, r in state.items()}
    path_of = {a.original_path: a.id for a in library}
    assert reason[path_of["/mnt/nas/bob/thumbs/x/y/abc-preview.jpeg"]] == "excluded"
    assert reason[path_of["/mnt/nas/bob/@eaDir/t1.jpg/SYNOPHOTO_THUMB_XL.jpg"]] == "excluded"
    assert reason[path_of["/mnt/nas/bob/offline/gone.jpg"]] == "offline"
    assert reason[path_of["/usr/src/app/upload/library/alice/copies/same-bytes.jpg"]] in ("duplicate", None)
    for hidden in (
        "/usr/src/app/upload/library/alice/locked/secret.jpg",
        "/usr/src/app/upload/library/alice/live.mov",
        "/usr/src/app/upload/library/alice/trash/deleted.jpg",
    ):
        assert path_of[hidden] not in state  # never enumerated
    bad = state[path_of["/mnt/nas/bob/bad/checksum.jpg"]]
    assert bad["status"] == "error" and "checksum" in bad["last_error"] and report.checksum_mismatches == 3
    rotated = state[path_of["/mnt/nas/bob/rotated/group-exif6.jpg"]]
    assert rotated["status"] == "staged"  # portrait boxes scaled with the oriented size
    unknown = next(a for a in library if "/unknown-size/" in a.original_path)
    assert unknown.width is None and state[unknown.id].get("face_short") is not None  # measured after download
    # never a face lookup or a download for what the enumeration already excluded
    asked = {r.path.split("?")[0] for r in log}
    for aid, r in state.items():
        if r.get("reason") in ("excluded", "offline", "duplicate"):
            assert f"/api/assets/{aid}/original" not in asked
    assert report.duplicates >= 1 and report.no_big_face >= 1 and report.excluded >= 3
    text = format_report(report)
    for word in ("seen", "byte-deduped vs store", "internal duplicates", "no face", "no big face", "transient errors"):
        assert word in text


def test_rerun_fetches_nothing_that_is_done(library, tmp_path):
    root = tmp_path / "fam"
    with FakeImmich(library, default_users()) as srv:
        first = stage_immich(clients_for(srv), options(), root)
        n_log = len(srv.log)
        second = stage_immich(clients_for(srv), options(), root)
        again = srv.log[n_log:]
    assert second.staged == first.staged and second.staged_now == 0
    fetched = [r.path for r in again if "/faces" in r.path or "/original" in r.path]
    bad = next(a for a in library if a.checksum_override)
    assert fetched and all(bad.id in p for p in fetched)  # only the asset whose checksum never matched


def test_faults_do_not_change_the_result(library, tmp_path):
    with FakeImmich(library, default_users()) as srv:
        clean = stage_immich(clients_for(srv), options(), tmp_path / "clean")
    with FakeImmich(library, default_users()) as srv:
        faults = [
            srv.add_fault(Fault("status", count=6, path="/api/faces", status=502, after=3)),
            srv.add_fault(Fault("rate_limit", count=3, path="/api/faces", retry_after="0", after=10)),
            srv.add_fault(Fault("truncate", count=3, path="/original", after=2)),
            srv.add_fault(Fault("corrupt", count=2, path="/original", after=5)),
            srv.add_fault(Fault("slow", count=2, path="/api/faces", delay_s=1.2, after=20)),
            srv.add_fault(Fault("status", count=2, path="/api/search/metadata", status=500)),
        ]
        faulty = stage_immich(clients_for(srv, timeout_s=0.5), options(), tmp_path / "faulty")
        assert srv.violations == []
    assert all(f.fired == f.count for f in faults)
    assert faulty.outcome == "complete" and staged(tmp_path / "faulty") == staged(tmp_path / "clean")
    assert faulty.request_retries == 6 + 3 + 2 + 2 and faulty.rate_limited == 3
    # Each corrupted download is caught by the checksum; a corruption that lands on the asset
    # whose checksum never matches anyway (workers race for the order) adds no mismatch.
    bad = next(a for a in library if a.checksum_override)
    corrupted = [p for p in faults[3].fired_on if bad.id not in p]
    assert faulty.checksum_mismatches == clean.checksum_mismatches + len(corrupted)
    assert clean.request_retries == 0


def test_outage_stops_cleanly_and_the_same_call_resumes_exactly(library, tmp_path):
    with FakeImmich(library, default_users()) as srv:
        reference = stage_immich(clients_for(srv), options(), tmp_path / "ref")
    with FakeImmich(library, default_users()) as srv:
        srv.schedule_outage(after_requests=150, duration_s=600, mode="drop")
        cut = stage_immich(clients_for(srv), options(), tmp_path / "run")
        assert cut.outcome == "outage" and "re-run the same command" in cut.message
        mid = staged(tmp_path / "run")
        assert 0 < len(mid) < reference.staged
        srv.end_outage()
        done = stage_immich(clients_for(srv), options(), tmp_path / "run")
        downloads = srv.downloads()
        assert srv.violations == []
    assert done.outcome == "complete"
    assert staged(tmp_path / "run") == staged(tmp_path / "ref")  # no loss, no duplicates, same paths
    assert all_files(tmp_path / "run") - {"report.json"} == all_files(tmp_path / "ref")
    bad = next(a for a in library if a.checksum_override)
    assert all(n == 1 for aid, n in downloads.items() if aid != bad.id)  # nothing fetched twice


def test_store_dedup_and_crash_recovery(library, tmp_path):
    want = sorted(expected_staged(library))
    by_id = {a.id: a for a in library}
    known = {by_id[want[0]].sha256, by_id[want[1]].sha256}
    store = FaceStore(tmp_path / "store", "model-x")
    store.add(pd.DataFrame({"sha256": sorted(known), "status": "noface", "face_index": -1, "model_id": "model-x"}))
    done = store.done()
    root = tmp_path / "fam"
    with FakeImmich(library, default_users()) as srv:
        rep = stage_immich(clients_for(srv), options(), root, in_store=done.__contains__)
        assert rep.in_store == 2 and set(staged(root)) == set(want) - {want[0], want[1]}
        # a crash lost the state write after a file was renamed into place: re-adopted, not re-fetched
        state = json.loads((root / "state.json").read_text())
        victim = want[5]
        state["assets"][victim].update(status="pending")
        state["assets"][victim].pop("sha256")
        (root / "state.json").write_text(json.dumps(state))
        stale = root / "files" / "usr" / ".tmp-0123456789ab.part"  # a download cut short by the crash
        stale.write_bytes(b"partial")
        n = len(srv.log)
        again = stage_immich(clients_for(srv), options(), root, in_store=done.__contains__)
        assert again.adopted_now == 1 and not any(victim in r.path for r in srv.log[n:])
        assert not stale.exists()
        assert staged(root)[victim][1] == by_id[victim].sha256
        # after embed the store knows every staged photo; a staged file deleted by hand is restored,
        # not dropped as "already in the store"
        everything = done | {sha for _, sha in staged(root).values()}
        lost = root / "files" / staged(root)[victim][0]
        lost.unlink()
        third = stage_immich(clients_for(srv), options(), root, in_store=everything.__contains__)
        assert third.staged_now == 1 and lost.read_bytes() == by_id[victim].data
        assert third.in_store == 2 and victim in staged(root)


def test_v27_server_stages_the_same(library, tmp_path):
    with FakeImmich(library, default_users(), version="2.7") as srv:
        rep = stage_immich(clients_for(srv), options(workers=4), tmp_path / "v27")
        assert srv.violations == []
    assert rep.outcome == "complete" and set(staged(tmp_path / "v27")) == expected_staged(library)


def test_keys_see_their_own_and_partner_assets(library, tmp_path):
    with FakeImmich(library, default_users()) as srv:
        bob_only = stage_immich(clients_for(srv, users=("bob",)), options(label="b"), tmp_path / "b")
        alice = stage_immich(clients_for(srv, users=("alice",)), options(label="a"), tmp_path / "a")
    owners = {a.id: a.owner for a in library}
    assert {owners[i] for i in staged(tmp_path / "b")} == {"bob"}
    assert {owners[i] for i in staged(tmp_path / "a")} == {"alice", "bob"}  # bob shares his timeline
    assert bob_only.seen < alice.seen


def test_missing_permission_stops_with_state_saved(library, tmp_path):
    with FakeImmich(library, default_users()) as srv:
        rep = stage_immich(clients_for(srv, users=("carol",)), options(label="c"), tmp_path / "c")
    assert rep.outcome == "auth" and "'face.read'" in rep.message
    assert json.loads((tmp_path / "c" / "state.json").read_text())["label"] == "c"


def test_secrets_stay_out_of_state_and_report(library, tmp_path):
    from facesets.atomic import write_json

    with FakeImmich(library, default_users()) as srv:
        srv.add_fault(Fault("status", count=30, path="/api/faces", status=500))
        rep = stage_immich(clients_for(srv, retries=1), options(), tmp_path / "s")
        keys = [u.key for u in srv.users.values()]
    write_json(tmp_path / "s" / "report.json", rep.to_dict())
    for f in ("state.json", "report.json"):
        text = (tmp_path / "s" / f).read_text()
        assert not any(k in text for k in keys)
    assert rep.errors >= 1 and os.path.exists(tmp_path / "s" / "state.json")
