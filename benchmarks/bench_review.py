"""Benchmark: `facesets review` on a large library (1,000 identities x 100 faces by default).

A synthetic ledger (no photos: the page's cost is the ledger, the decisions and JSON) with a
decisions file of ``--decisions`` entries; the real server on 127.0.0.1, requests over HTTP:
the first state after a change (ledger + decisions read, decisions applied), then the warm
requests the page makes: state, a page of 50 identities, a search, an identity's first 100 faces,
a thumbnail. Baseline in the same run: reading and parsing ledger.json alone (json.loads), so the
ratio says what the page adds to the unavoidable cost. Prints a table; the machine is shared.

    .venv/bin/python benchmarks/bench_review.py [--identities 1000] [--faces 100]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

from facesets import ledger as L
from facesets.review.server import Library, ReviewServer

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d49444154789c6360f8cf00000301010018dd8db40000000049454e44ae426082"
)


def build(root: Path, n_ids: int, n_faces: int, n_decisions: int) -> tuple[Path, Path, str]:
    lib = root / "facesets_swap_ready"
    (lib / ".faces").mkdir(parents=True)
    idents = []
    first = ""
    for n in range(1, n_ids + 1):
        members = {}
        for j in range(n_faces):
            sha = hashlib.sha256(f"{n}-{j}".encode()).hexdigest()
            key = f"{sha}_0"
            first = first or key
            members[key] = L.Member("s", sha, f"/photos/{n}/{j}.jpg", round(1 - j / n_faces, 4), f".faces/{key}.png")
        idents.append(
            L.Identity(
                number=n,
                name=L.discovered_name(n),
                kind="discovered",
                sources=["s"],
                members=members,
                centroid_sum={"m": [0.1] * 128},
                centroid_count={"m": n_faces},
            )
        )
    (lib / ".faces" / f"{first}.png").write_bytes(PNG)
    L.save(L.Ledger(idents), lib / "ledger.json")
    dec = root / "decisions.yaml"
    items = [f"  - {{action: name, identity: {k + 1}, name: person{k + 1}}}\n" for k in range(n_decisions // 2)]
    items += [f"  - {{action: merge, identity: {2 * k + 1}, from: {2 * k + 2}}}\n" for k in range(n_decisions - len(items))]
    dec.write_text("version: 1\ndecisions:\n" + "".join(items))
    return lib, dec, first


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--identities", type=int, default=1000)
    ap.add_argument("--faces", type=int, default=100)
    ap.add_argument("--decisions", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lib, dec, face = build(Path(tmp), a.identities, a.faces, a.decisions)
        srv = ReviewServer(Library(lib, dec))
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        host, port = srv.server_address[:2]

        def get(path: str) -> bytes:
            c = http.client.HTTPConnection(host, port, timeout=60)
            c.request("GET", path, headers={"Host": f"127.0.0.1:{port}", "X-Facesets-Token": srv.token})
            r = c.getresponse()
            body = r.read()
            c.close()
            assert r.status == 200, (path, r.status, body[:200])
            return body

        def cold() -> None:
            dec.touch()  # a changed file: the next request re-reads and re-applies everything
            get("/api/state")

        base = timed(lambda: json.loads((lib / "ledger.json").read_text()), a.repeat)
        rows = [("baseline: json.loads(ledger.json)", base)]
        rows.append(("state after a change (read + apply)", timed(cold, a.repeat)))
        get("/api/state")
        for label, path in [
            ("state (warm)", "/api/state"),
            ("50 identities, page 10", "/api/identities?page=10&per=50"),
            ("search 'person1'", "/api/identities?q=person1"),
            ("identity: first 100 faces", "/api/identity/1?page=0&per=100"),
            ("thumbnail", f"/face/{face}.png"),
        ]:
            rows.append((label, timed(lambda p=path: get(p), a.repeat)))
        srv.shutdown()
        size = (lib / "ledger.json").stat().st_size / 2**20
    print(f"review: {a.identities} identities x {a.faces} faces, {a.decisions} decisions, ledger {size:.0f} MiB")
    print(f"{'request':40s} {'median ms':>10s} {'x baseline':>10s}")
    for label, t in rows:
        print(f"{label:40s} {t * 1000:10.1f} {t / base:10.2f}")


if __name__ == "__main__":
    main()
