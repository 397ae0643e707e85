"""Immich staging throughput: N workers vs 1 when every request costs 50 ms on the server.

    python benchmarks/bench_immich.py [--latency-ms 50] [--workers 8] [--out docs/benchmarks.md]

The local Immich (tests/support/fake_immich.py: spec-validated endpoints, real photos from the demo
set and ../shared/datasets/dev-faces, face boxes from YuNet in preview space) runs in its own
process with ``--latency-ms`` added to every request, so its CPU work does not share the
client's interpreter. The same full staging (enumerate, faces per asset, prefilter, download,
checksum, dedup, save) runs once with 1 worker and once with ``--workers``, each into a fresh
folder; the section records both wall times, the speed-up and the target (>= 5x).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shlex
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]

import report  # noqa: E402
from facesets.immich.client import CircuitBreaker, ClientStats, ImmichClient, client_options  # noqa: E402
from facesets.immich.stage import stage_immich, stage_options  # noqa: E402

SECTION = "## immich staging: parallel workers vs one, 50 ms per request"
HEADER = "# Benchmarks\n"
TARGET = 5.0
INCLUDE = ("**/*.jpg", "**/*.jpeg", "**/*.png")
EXCLUDE = ("**/@eaDir/**", "**/thumbs/**", "**/encoded-video/**")


def _serve(assets, users, latency_s: float, conn) -> None:
    from tests.support.fake_immich import FakeImmich

    with FakeImmich(assets, users, latency_s=latency_s) as srv:
        conn.send(srv.url)
        conn.recv()  # stop
        conn.send((len(srv.log), list(srv.violations)))


def build(model_dir: Path):
    from facesets.analyzers import create_analyzer
    from facesets.config import load_schema, validate
    from tests.support.fake_immich import build_assets, default_users, detection_cache, photo_files, standard_specs

    embed = validate({}, load_schema("config")["properties"]["embed"], "bench")
    analyzer = create_analyzer("opencv", embed, model_dir=model_dir)
    files = photo_files(REPO / "data" / "demo" / "photos", REPO.parent / "shared" / "datasets" / "dev-faces")
    assets = build_assets(standard_specs(files, hostile=False), detection_cache(analyzer))
    return assets, default_users(extra_keys=False)


def run_once(url: str, users, workers: int, root: Path) -> tuple[float, object]:
    opts = client_options({"workers": workers}, timeout_s=30, backoff_s=0.2)
    br, st = CircuitBreaker(opts.breaker_errors), ClientStats()
    clients = [ImmichClient(url, u.key, f"KEY_{u.name.upper()}", opts, br, st) for u in users]
    sopts = stage_options("bench", {"workers": workers}, INCLUDE, EXCLUDE)  # schema check: not timed
    t0 = time.perf_counter()
    rep = stage_immich(clients, sopts, root)
    return time.perf_counter() - t0, rep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency-ms", type=float, default=50.0)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--model-dir", type=Path, default=REPO / "work" / "models")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)

    assets, users = build(args.model_dir)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(assets, users, args.latency_ms / 1000, child), daemon=True)
    proc.start()
    url = parent.recv()
    results = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for w in (1, args.workers):
                secs, rep = run_once(url, users, w, Path(tmp) / f"w{w}")
                results[w] = (secs, rep)
                print(
                    f"workers={w}: {secs:.2f} s, {rep.processed_now} assets, {rep.requests} requests, "
                    f"{rep.staged} staged, outcome {rep.outcome}",
                    flush=True,
                )
    finally:
        parent.send("stop")
        n_requests, violations = parent.recv()
        proc.join(10)
    (t1, r1), (tn, rn) = results[1], results[args.workers]
    speedup = t1 / tn
    print(f"speed-up {speedup:.2f}x (target >= {TARGET:g}x); spec violations: {len(violations)}")
    m = report.machine_facts()
    cmd = "python benchmarks/bench_immich.py" + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")
    same = r1.staged == rn.staged and r1.processed_now == rn.processed_now
    section = (
        "\n".join(
            [
                SECTION,
                "",
                f"- Date: {report.utc_date()}",
                f"- Machine: {m['cpu']}; {m['cores']}; {m['ram']} RAM; {m['os']}; Python {m['python']}",
                f"- Command: `{cmd}`",
                f"- Server: the local Immich (`tests/support/fake_immich.py`) in its own process, +{args.latency_ms:g} ms on "
                f"every request, {len(assets)} assets of 2 users (demo photos + dev-faces, real YuNet boxes in a "
                f"720 px preview space), every request and response validated against the OpenAPI spec "
                f"({len(violations)} violations in {n_requests} requests).",
                "- Client: `stage_immich` end to end (enumerate both keys x 2 visibilities, faces per asset, "
                "prefilter, download, SHA-1 check, sha256 dedup, atomic save, state.json), a fresh folder per run.",
                "",
                "| workers | seconds | assets processed | requests | staged | assets/s |",
                "|---:|---:|---:|---:|---:|---:|",
                f"| 1 | {t1:.2f} | {r1.processed_now} | {r1.requests} | {r1.staged} | {r1.processed_now / t1:.1f} |",
                f"| {args.workers} | {tn:.2f} | {rn.processed_now} | {rn.requests} | {rn.staged} | "
                f"{rn.processed_now / tn:.1f} |",
                "",
                f"- **Speed-up {args.workers} workers / 1: {speedup:.2f}x**; target >= {TARGET:g}x: "
                f"{'**PASS**' if speedup >= TARGET else '**FAIL**'}. Both runs staged the same assets: "
                f"{'yes' if same else 'NO'}.",
                f"- The ideal is {args.workers}x on the per-asset part; enumeration is sequential per key and "
                "visibility (a few requests), and the 2 CPUs this machine shares also run the server.",
            ]
        )
        + "\n"
    )
    if not args.no_write:
        report.write_section(args.out, SECTION, section, HEADER)
        print(f"wrote {SECTION!r} to {args.out}")
    return 0 if speedup >= TARGET and same and not violations else 1


if __name__ == "__main__":
    sys.exit(main())
