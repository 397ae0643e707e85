"""The Immich client against the local, spec-validating Immich: one test per fault."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests

from facesets.immich.client import (
    CircuitBreaker,
    ClientStats,
    ImmichAuthError,
    ImmichClient,
    ImmichOutage,
    ImmichTLSError,
    ImmichTransientError,
    client_options,
)
from facesets.immich.models import parse_faces, parse_search_page
from tests.support.fake_immich import (
    FakeImmich,
    Fault,
    PhotoSpec,
    build_assets,
    default_users,
    detection_cache,
    photo_files,
    spec_path,
)

SEARCH = {"type": "IMAGE", "page": 1, "size": 250, "visibility": "timeline", "withExif": False}


@pytest.fixture(scope="module")
def assets(opencv_analyzer, demo_photos):
    try:
        spec_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    files = photo_files(demo_photos, None)
    group = next(p for p in files if p.name == "t1.jpg")
    specs = [PhotoSpec(f, f"/photos/{f.name}", "alice") for f in [*files[:5], group]]
    return build_assets(specs, detection_cache(opencv_analyzer))


@pytest.fixture
def server(assets):
    srv = FakeImmich(assets, default_users())
    with srv:
        yield srv
    assert srv.violations == [], srv.violations  # the client never left the spec


class Sleeps(list):
    def __call__(self, s: float) -> None:
        self.append(s)
        time.sleep(min(s, 0.01))


def make_client(server: FakeImmich, user: str = "alice", key: str | None = None, **over) -> tuple[ImmichClient, Sleeps]:
    opts = client_options(None, **{"timeout_s": 2.0, "backoff_s": 0.01, "retries": 5, "breaker_errors": 12, **over})
    sleeps = Sleeps()
    key = key if key is not None else server.users[user].key
    return ImmichClient(
        server.url, key, "IMMICH_API_KEY", opts, CircuitBreaker(opts.breaker_errors), ClientStats(), sleep=sleeps
    ), sleeps


def group_asset(server: FakeImmich):
    return next(a for a in server.assets if a.original_path.endswith("t1.jpg"))


def test_clean_calls_parse(server):
    c, _ = make_client(server)
    page = parse_search_page(c.search_metadata(SEARCH))
    assert len(page.assets) == 6 and page.next_page is None
    faces = parse_faces(c.faces(group_asset(server).id))
    assert len(faces) >= 5 and all(f.image_width == 720 for f in faces)  # preview space
    assert c.stats.retries == 0


def test_pagination_until_next_page_is_null(server):
    c, _ = make_client(server)
    ids, page = [], 1
    while page is not None:
        p = parse_search_page(c.search_metadata({**SEARCH, "page": page, "size": 4}))
        ids += [a.id for a in p.assets]
        page = p.next_page
    assert len(ids) == len(set(ids)) == 6


def test_5xx_burst_is_retried_with_backoff(server):
    server.add_fault(Fault("status", count=3, path="/api/faces", status=502))
    c, sleeps = make_client(server)
    assert parse_faces(c.faces(group_asset(server).id))
    assert c.stats.retries == 3 and len(sleeps) == 3
    assert sleeps[2] > sleeps[0]  # exponential (jitter keeps each within [0.5, 1] x its step)


def test_timeout_is_retried(server):
    server.add_fault(Fault("slow", count=1, path="/api/faces", delay_s=1.5))
    c, _ = make_client(server, timeout_s=0.4)
    assert parse_faces(c.faces(group_asset(server).id))
    assert c.stats.retries == 1


def test_429_waits_for_retry_after(server):
    server.add_fault(Fault("rate_limit", count=2, path="/api/search/metadata", retry_after="3"))
    c, sleeps = make_client(server)
    assert parse_search_page(c.search_metadata(SEARCH)).assets
    assert sleeps == [3.0, 3.0] and c.stats.rate_limited == 2 and c.stats.retries == 0
    assert c.breaker.consecutive == 0  # a busy server is not an outage


def test_truncated_bodies_are_retried(server, tmp_path):
    server.add_fault(Fault("truncate", count=1, path="/api/search/metadata"))
    server.add_fault(Fault("truncate", count=2, path="/original"))
    c, _ = make_client(server)
    assert len(parse_search_page(c.search_metadata(SEARCH)).assets) == 6
    a = group_asset(server)
    d = c.download_original(a.id, tmp_path / "x.part")
    assert d.sha1_b64 == a.checksum and (tmp_path / "x.part").read_bytes() == a.data
    assert c.stats.retries == 3


def test_corrupt_download_is_detected_by_checksum(server, tmp_path):
    server.add_fault(Fault("corrupt", count=1, path="/original"))
    c, _ = make_client(server)
    a = group_asset(server)
    assert c.download_original(a.id, tmp_path / "x").sha1_b64 != a.checksum
    assert c.download_original(a.id, tmp_path / "x").sha1_b64 == a.checksum


def test_persistent_5xx_gives_up_with_a_transient_error(server):
    server.add_fault(Fault("status", count=100, path="/api/faces", status=500))
    c, _ = make_client(server, retries=2)
    with pytest.raises(ImmichTransientError, match="HTTP 500"):
        c.faces(group_asset(server).id)


def test_401_stops_at_once_without_the_key(server):
    c, sleeps = make_client(server, key="wrong-key-0123456789abcdef")
    with pytest.raises(ImmichAuthError) as exc:
        c.search_metadata(SEARCH)
    assert "401" in str(exc.value) and "$IMMICH_API_KEY" in str(exc.value)
    assert "wrong-key" not in str(exc.value) and not sleeps and c.stats.requests == 1


def test_403_names_the_missing_permission(server):
    c, _ = make_client(server, user="carol")  # asset.read + asset.download, no face.read
    assert c.search_metadata(SEARCH) is not None
    with pytest.raises(ImmichAuthError) as exc:
        c.faces(group_asset(server).id)
    assert "'face.read'" in str(exc.value) and "403" in str(exc.value) and c.stats.retries == 0


def test_breaker_trips_when_the_probe_fails(server):
    server.schedule_outage(after_requests=0, duration_s=60, mode="drop")
    c, _ = make_client(server, retries=50)
    with pytest.raises(ImmichOutage, match="ping failed"):
        c.search_metadata(SEARCH)
    assert len(server.requests_to("/api/search/metadata")) == 12  # 12 consecutive failures, then the probe
    assert len(server.requests_to("/api/server/ping")) == 1
    with pytest.raises(ImmichOutage):  # every later call stops at once
        c.faces(group_asset(server).id)
    assert len(server.requests_to("/api/faces")) == 0


def test_short_outage_is_ridden_out_by_retries(server):
    server.schedule_outage(after_requests=0, duration_s=0.6, mode="503")
    c, _ = make_client(server, retries=30, backoff_s=0.05, backoff_max_s=0.1, breaker_errors=100)
    c._sleep = time.sleep  # real time, so the outage can end
    assert len(parse_search_page(c.search_metadata(SEARCH)).assets) == 6
    assert c.stats.retries >= 3 and not c.breaker.tripped


def test_breaker_probe_ok_lets_the_run_continue(server):
    server.add_fault(Fault("status", count=14, path="/api/faces", status=503))
    c, _ = make_client(server, retries=20)
    assert parse_faces(c.faces(group_asset(server).id))
    assert len(server.requests_to("/api/server/ping")) == 1 and not c.breaker.tripped
    ping = server.requests_to("/api/server/ping")[0]
    assert ping.user is None  # the probe does not send the key


def test_breaker_is_shared_by_workers_and_counts_consecutive_failures(server):
    br = CircuitBreaker(3)
    assert [br.failure(), br.failure()] == [False, False]
    br.success()
    assert [br.failure(), br.failure(), br.failure(), br.failure()] == [False, False, True, False]
    br.probe_result(False, "down")
    assert br.tripped


def test_spec_validation_catches_what_the_spec_does_not_say(server):
    key = {"x-api-key": server.users["alice"].key}
    r = requests.post(server.url + "/api/search/metadata", json={**SEARCH, "userIds": ["x"]}, headers=key, timeout=5)
    assert r.status_code == 400
    r = requests.get(server.url + "/api/faces", headers=key, timeout=5)  # id missing
    assert r.status_code == 400
    r = requests.get(server.url + "/api/faces", params={"id": "not-a-uuid"}, headers=key, timeout=5)
    assert r.status_code == 400
    r = requests.post(server.url + "/api/search/metadata", json={**SEARCH, "size": 5000}, headers=key, timeout=5)
    assert r.status_code == 400
    r = requests.get(server.url + f"/api/assets/{group_asset(server).id}/thumbnail", headers=key, timeout=5)
    assert r.status_code == 501  # in the spec, but not an endpoint the stage step uses
    r = requests.get(server.url + "/api/no/such/path", headers=key, timeout=5)
    assert r.status_code == 404
    v = list(server.violations)
    assert any("userIds" in x for x in v) and any("'id' missing" in x for x in v)
    assert any("not-a-uuid" in x for x in v) and any("5000" in x for x in v)
    assert any("thumbnail" in x for x in v) and any("not in the spec" in x for x in v)
    server.violations.clear()


def test_response_validation_catches_a_field_the_spec_does_not_define(server, monkeypatch):
    orig = FakeImmich._asset_dto
    monkeypatch.setattr(FakeImmich, "_asset_dto", lambda self, a, e: {**orig(self, a, e), "faces": []})
    c, _ = make_client(server)
    c.search_metadata(SEARCH)
    assert any("'faces' was unexpected" in x for x in server.violations)
    monkeypatch.setattr(
        FakeImmich, "_asset_dto", lambda self, a, e: {k: v for k, v in orig(self, a, e).items() if k != "checksum"}
    )
    server.violations.clear()
    c.search_metadata(SEARCH)
    assert any("'checksum' is a required property" in x for x in server.violations)
    server.violations.clear()


def test_v27_shapes_validate_and_parse(assets):
    with FakeImmich(assets, default_users(), version="2.7") as srv:
        c, _ = make_client(srv)
        body = c.search_metadata(SEARCH)
        items = body["assets"]["items"]
        assert all(isinstance(a["duration"], str) and "unassignedFaces" in a for a in items)
        assert any(a["people"] and a["people"][0]["faces"] for a in items)
        assert len(parse_search_page(body).assets) == 6
        assert srv.violations == []


def test_api_key_never_appears_in_messages_or_logs(server, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    secret = server.users["alice"].key
    c, _ = make_client(server, retries=1)
    texts = [repr(c), str(c.__dict__.get("opts"))]
    server.add_fault(Fault("status", count=10, path="/api/faces", status=500))
    server.add_fault(Fault("truncate", count=10, path="/original"))
    for call in (
        lambda: c.faces(group_asset(server).id),
        lambda: c.download_original(group_asset(server).id, tmp_path / "x"),
    ):
        with pytest.raises(ImmichTransientError) as exc:
            call()
        texts += [str(exc.value), repr(exc.value)]
    bad, _ = make_client(server, key=secret + "x")
    with pytest.raises(ImmichAuthError) as exc:
        bad.search_metadata(SEARCH)
    texts.append(str(exc.value))
    assert all(secret not in t for t in texts)
    assert secret not in caplog.text


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed: TLS test skipped")
def test_tls_is_verified_and_a_ca_bundle_makes_it_work(assets, tmp_path):
    cert, key = _self_signed(tmp_path)
    with FakeImmich(assets, default_users(), tls=(cert, key)) as srv:
        c, _ = make_client(srv)
        with pytest.raises(ImmichTLSError, match="ca_bundle"):
            c.search_metadata(SEARCH)
        c2, _ = make_client(srv, ca_bundle=str(cert))
        assert len(parse_search_page(c2.search_metadata(SEARCH)).assets) == 6
        assert srv.violations == []
