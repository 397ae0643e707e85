"""`facesets review` refuses what it must: no token, paths outside the library, cross-origin writes,
a malformed decisions file. Each refusal has a clear message and writes nothing.

Runs the real server on 127.0.0.1 over a small ledger (no photos needed); raw HTTP via http.client
so the tests control every header, as a hostile page or client would.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
from pathlib import Path

import pytest

from facesets import ledger as L
from facesets.review.server import Library, ReviewServer

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d49444154789c6360f8cf00000301010018dd8db40000000049454e44ae426082"
)


def key(photo: str) -> str:
    return hashlib.sha256(photo.encode()).hexdigest() + "_0"


@pytest.fixture
def served(tmp_path: Path):
    lib = tmp_path / "out" / "facesets_swap_ready"
    (lib / ".faces").mkdir(parents=True)
    photo = tmp_path / "photos" / "a1.jpg"
    photo.parent.mkdir()
    photo.write_bytes(b"\xff\xd8 not really a jpeg")
    idents = []
    for n, photos in ((1, ["a1", "a2"]), (2, ["b1"])):
        members = {}
        for p in photos:
            (lib / ".faces" / f"{key(p)}.png").write_bytes(PNG)
            members[key(p)] = L.Member(
                "s", key(p)[:64], str(tmp_path / "photos" / f"{p}.jpg"), 0.5, f".faces/{key(p)}.png"
            )
        idents.append(
            L.Identity(number=n, name=L.discovered_name(n), kind="discovered", sources=["s"], members=members)
        )
    L.save(L.Ledger(idents), lib / "ledger.json")
    (tmp_path / "secret.txt").write_text("TOP-SECRET-CONTENT")
    decisions = tmp_path / "config" / "decisions.yaml"
    server = ReviewServer(Library(lib, decisions))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, decisions, tmp_path
    server.shutdown()
    server.server_close()


def request(server, method, path, headers=None, body=None, token=True):
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    h = {"Host": f"127.0.0.1:{port}"}
    if token:
        h["X-Facesets-Token"] = server.token
    h.update(headers or {})
    data = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
    conn.request(method, path, body=data, headers=h)
    r = conn.getresponse()
    out = r.status, r.read(), dict(r.getheaders())
    conn.close()
    return out


def post(server, decision, headers=None, token=True):
    h = {"Content-Type": "application/json", **(headers or {})}
    return request(server, "POST", "/api/decisions", h, {"decision": decision}, token)


def error(body: bytes) -> str:
    return json.loads(body)["error"]


def test_binds_to_loopback_only(served):
    server, _, _ = served
    assert server.server_address[0] == "127.0.0.1"


def test_a_good_request_works(served):
    """The positive control: the same requests the refusals below vary, accepted."""
    server, decisions, _ = served
    status, body, _ = post(server, {"action": "name", "identity": 1, "name": "alice"})
    assert status == 200, body
    assert "alice" in decisions.read_text()
    assert request(server, "GET", f"/face/{key('a1')}.png")[1] == PNG
    assert request(server, "GET", f"/photo/{key('a1')}")[1].startswith(b"\xff\xd8")


@pytest.mark.parametrize("path", ["/", "/api/state", "/api/identities", f"/face/{key('a1')}.png", "/lib/ledger.json"])
def test_no_token_is_refused(served, path):
    server, _, _ = served
    status, body, _ = request(server, "GET", path, token=False)
    assert status == 403 and "token" in error(body)
    status, body, _ = request(server, "GET", path, {"X-Facesets-Token": "wrong"}, token=False)
    assert status == 403 and "token" in error(body)


def test_token_in_url_sets_a_strict_cookie(served):
    server, _, _ = served
    status, _, headers = request(server, "GET", f"/?token={server.token}", token=False)
    assert status == 200
    assert "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
    cookie = headers["Set-Cookie"].split(";")[0]
    assert request(server, "GET", "/api/state", {"Cookie": cookie}, token=False)[0] == 200


def test_write_without_token_header_is_refused_even_with_the_cookie(served):
    server, decisions, _ = served
    cookie = f"facesets_review={server.token}"
    status, body, _ = post(server, {"action": "hide", "identity": 1}, {"Cookie": cookie}, token=False)
    assert status == 403 and "X-Facesets-Token" in error(body)
    assert not decisions.exists()


@pytest.mark.parametrize(
    "path",
    [
        "/lib/../../secret.txt",
        "/lib/%2e%2e/%2e%2e/secret.txt",
        "/lib/..%2f..%2fsecret.txt",
        "/lib//etc/passwd",
        "/lib/../../../../../../etc/passwd",
    ],
)
def test_paths_outside_the_library_are_refused(served, path):
    server, _, _ = served
    status, body, _ = request(server, "GET", path)
    assert status == 403 and "outside the library" in error(body)
    assert b"TOP-SECRET" not in body


def test_a_link_out_of_the_library_is_refused(served):
    server, _, tmp = served
    (server.library.root / "sneaky.txt").symlink_to(tmp / "secret.txt")
    status, body, _ = request(server, "GET", "/lib/sneaky.txt")
    assert status == 403 and "outside the library" in error(body) and b"TOP-SECRET" not in body


@pytest.mark.parametrize(
    "path", ["/face/..%2f..%2fsecret", "/photo/../../secret.txt", "/static/../server.py", "/photo/" + "0" * 64 + "_0"]
)
def test_other_files_are_not_served(served, path):
    server, _, _ = served
    status, body, _ = request(server, "GET", path)
    assert status in (400, 404) and b"TOP-SECRET" not in body and error(body)


@pytest.mark.parametrize(
    ("headers", "words"),
    [
        ({"Origin": "http://evil.example"}, "cross-origin"),
        ({"Origin": "null"}, "cross-origin"),
        ({"Sec-Fetch-Site": "cross-site"}, "cross-site"),
        ({"Sec-Fetch-Site": "same-site"}, "cross-site"),
        ({"Content-Type": "text/plain"}, "application/json"),
    ],
)
def test_cross_origin_posts_are_refused(served, headers, words):
    server, decisions, _ = served
    status, body, _ = post(server, {"action": "hide", "identity": 1}, headers)
    assert status in (403, 415) and words in error(body)
    assert not decisions.exists()


def test_another_host_name_is_refused(served):
    """DNS rebinding: a page at evil.example resolving to 127.0.0.1 sends Host: evil.example."""
    server, decisions, _ = served
    port = server.server_address[1]
    status, body, _ = post(server, {"action": "hide", "identity": 1}, {"Host": f"evil.example:{port}"})
    assert status == 403 and "Host" in error(body)
    assert not decisions.exists()


def test_malformed_decisions_file_is_refused_and_kept(served):
    server, decisions, _ = served
    decisions.parent.mkdir(parents=True, exist_ok=True)
    decisions.write_text("version: 1\ndecisions:\n  - {action: hide, identity: 1}\n  - {action: explode}\n")
    before = decisions.read_bytes()
    status, body, _ = post(server, {"action": "name", "identity": 2, "name": "bob"})
    assert status == 409 and f"{decisions}:4" in error(body) and "explode" in error(body)
    assert decisions.read_bytes() == before
    state = json.loads(request(server, "GET", "/api/state")[1])
    assert f"{decisions}:4" in state["error"]


def test_a_decision_about_nothing_is_refused(served):
    server, decisions, _ = served
    status, body, _ = post(server, {"action": "merge", "identity": 1, "from": 9})
    assert status == 409 and "no identity with that number" in error(body)
    status, body, _ = post(server, {"action": "reject", "identity": 1, "faces": [key("zz")]})
    assert status == 409 and "not a face of this library" in error(body)
    status, body, _ = request(server, "POST", "/api/decisions", {"Content-Type": "application/json"}, b"{not json")
    assert status == 400 and "not JSON" in error(body)
    assert not decisions.exists()


def test_the_command_prints_a_tokened_loopback_url(served, tmp_path):
    import subprocess
    import sys
    import urllib.request

    server, decisions, _ = served
    lib = server.library.root
    exe = Path(sys.executable).with_name("facesets")
    proc = subprocess.Popen(
        [str(exe), "review", "--library", str(lib), "--decisions", str(decisions)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("facesets review: http://127.0.0.1:") and "?token=" in line
        url = line.split()[-1]
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.status == 200 and b"face-sets review" in r.read()
        bare = url.split("?")[0] + "api/state"
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(bare, timeout=10)
        assert exc.value.code == 403
    finally:
        proc.terminate()
        proc.wait(10)
    missing = subprocess.run([str(exe), "review", "--library", str(tmp_path / "nope")], capture_output=True, text=True)
    assert missing.returncode == 2 and "no ledger.json" in missing.stderr
