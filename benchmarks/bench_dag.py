"""Benchmark: dedup against embed on the same generated photo library, first run, rerun, +10 photos.

Library: ``benchmarks/build_library.py`` (12 MP JPEG variants of the demo photos: jittered
crops, upscales, EXIF rotations, recompressions; about 5 copies per demo photo at 1,000 files,
so near-duplicate dense). For every ``--n``, in one process and one run:

1. stage (scan + group) and embed (opencv backend, fresh face store, ``--workers`` threads);
2. dedup (``facesets.dedup.find_duplicates`` with the face table, fresh caches);
3. dedup again (no-op rerun: hashes and verdicts from the caches);
4. 10 new photos (variants with another seed) hard-linked next to the library: stage, embed
   (the store has the rest) and dedup again: what the increment costs;
5. optionally (``--baseline``) the dedup before this change (commit ``--baseline-commit``,
   loaded from git into its own module) on the same inputs, fresh cache: the ratio in one run.

Ratios are what counts (the machine is shared: other processes' CPU use is measured and
reported). The section "dedup vs embed" of docs/benchmarks.md is rewritten.

    python benchmarks/bench_dag.py [--n 1000] [--baseline]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_library import DEFAULT_PHOTOS, make_variant, plan  # noqa: E402
from build_library import build_library as build  # noqa: E402

import report  # noqa: E402
from facesets import schema  # noqa: E402
from facesets.analyzers import create_analyzer  # noqa: E402
from facesets.config import load_schema, validate  # noqa: E402
from facesets.dedup import DedupOptions, dedup_options, find_duplicates  # noqa: E402
from facesets.embed import EmbedOptions, embed_listing  # noqa: E402
from facesets.listing import group, scan  # noqa: E402
from facesets.store import FaceStore  # noqa: E402

SECTION = "## dedup vs embed on generated libraries (issue #18)"
HEADER = "# Benchmarks\n"
BASELINE_COMMIT = "ff73559"  # dedup with the issue #14 fixes, before the incremental verification


def _busy() -> tuple[float, float]:
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:]]
    return float(sum(v) - v[3] - v[4]), float(sum(v))


class Timed:
    """Wall and CPU seconds of a block, and other processes' CPU use meanwhile (in CPUs)."""

    def __enter__(self) -> Timed:
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        self.b0 = _busy()[0]
        return self

    def __exit__(self, *exc: object) -> None:
        hz = os.sysconf("SC_CLK_TCK")
        self.wall = time.perf_counter() - self.t0
        self.cpu = time.process_time() - self.c0
        busy = (_busy()[0] - self.b0) / hz
        self.other = max(0.0, (busy - self.cpu) / max(self.wall, 1e-9))

    def row(self) -> dict:
        return {"wall_s": round(self.wall, 2), "cpu_s": round(self.cpu, 2), "other_cpus": round(self.other, 2)}


def _listing(root: Path):
    stage = load_schema("config")["properties"]["stage"]["properties"]
    return group(scan(root, stage["include"]["default"], stage["exclude"]["default"], workers=2), "bench")


def _dedup_opts(workers: int) -> DedupOptions:
    d = validate({}, load_schema("config")["properties"]["dedup"], "dedup defaults")
    return dedup_options({k: v for k, v in d.items() if k != "workers"}, workers=workers)


def _baseline_module(commit: str):
    src = subprocess.run(
        ["git", "show", f"{commit}:facesets/dedup.py"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="dedup-baseline-")) / "dedup_baseline.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("facesets_dedup_baseline", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def bench(n: int, args: argparse.Namespace) -> dict:
    files = build(args.photos, args.library_root / f"library-{n}", n, args.seed, procs=2)
    work = Path(tempfile.mkdtemp(prefix=f"bench-dag-{n}-", dir=args.work))
    lib = work / "photos"
    lib.mkdir()
    for f in files:
        os.link(f, lib / f.name)
    settings = validate({}, load_schema("config")["properties"]["embed"], "embed defaults")
    analyzer = create_analyzer("opencv", settings, model_dir=args.model_dir)
    eopts = EmbedOptions(
        det_size=settings["det_size"],
        min_face=settings["min_face"],
        max_pixels=settings["max_pixels"],
        batch_images=settings["batch_images"],
        workers=args.workers,
    )
    dopts = _dedup_opts(args.workers)
    store = FaceStore(work / "store", analyzer.model_id)
    out: dict = {"n": n, "steps": {}}

    def embed_step(name: str):
        with Timed() as t:
            listing = _listing(lib)
        out["steps"][f"{name}: stage"] = t.row()
        with Timed() as t:
            st = embed_listing(listing, analyzer, store, eopts, work / "faces.parquet", plain_progress=True)
        out["steps"][f"{name}: embed"] = t.row() | {"analyzed": st.analyzed, "faces": st.faces}
        return listing, schema.read_table(work / "faces.parquet", ["sha256", "embedding", "model_id"])

    def dedup_step(name: str, listing, faces, fn=find_duplicates, cache: str = "cache") -> dict:
        with Timed() as t:
            doc, st = fn(listing, faces, work / cache, dopts)
        row = t.row() | {
            k: getattr(st, k, None) for k in ("candidates", "checked", "cached", "skipped", "verified", "hashed")
        }
        row["groups"] = len(doc["near_duplicate"])
        row["grouped_photos"] = sum(len(g["members"]) for g in doc["near_duplicate"])
        out["steps"][f"{name}: dedup"] = row
        print(f"[n={n}] {name}: dedup {row}", flush=True)
        return doc

    listing, faces = embed_step("first run")
    print(f"[n={n}] first run: embed {out['steps']['first run: embed']}", flush=True)
    first = dedup_step("first run", listing, faces)
    dedup_step("no-op rerun", listing, faces)
    if args.baseline:
        base = _baseline_module(args.baseline_commit)
        bdoc = dedup_step(
            f"baseline {args.baseline_commit}", listing, faces, base.find_duplicates, cache="cache-baseline"
        )
        same = sorted(map(sorted, (map(str, (m["path"] for m in g["members"])) for g in bdoc["near_duplicate"])))
        ours = sorted(map(sorted, (map(str, (m["path"] for m in g["members"])) for g in first["near_duplicate"])))
        out["baseline_same_groups"] = same == ours
    for v in plan(args.photos, lib, 10, seed=args.seed + 1000):
        make_variant(dataclasses.replace(v, out=str(lib / f"new-{v.index:04d}.jpg")))
    listing, faces = embed_step("+10 photos")
    dedup_step("+10 photos", listing, faces)
    return out


def render(results: dict) -> str:
    m = results["machine"]
    lines = [
        SECTION,
        "",
        f"- Date: {results['date']}; machine: {m['cpu']}, {m['cores']}, {m['ram']} RAM; shared with other "
        "engineers during the run (other processes' CPU use per step in the table: times are inflated, "
        "the ratios within one run are what counts).",
        f"- Command: `{results['command']}`",
        "- Library: `benchmarks/build_library.py` 12 MP variants of the demo photos (jittered crops, "
        "upscales, EXIF rotations, recompressions); embed = opencv backend, fresh face store; dedup = "
        "`find_duplicates` with the face table, fresh hash and verdict caches; all with "
        f"{results['workers']} worker threads.",
        "",
    ]
    for e in results["sizes"]:
        s = e["steps"]
        lines += [
            f"### {e['n']} photos",
            "",
            "| step | wall s | CPU s | other load (CPUs) | details |",
            "|---|---:|---:|---:|---|",
        ]
        for name, r in s.items():
            det = ", ".join(f"{k} {v}" for k, v in r.items() if k not in ("wall_s", "cpu_s", "other_cpus"))
            lines.append(f"| {name} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['other_cpus']:.2f} | {det} |")
        emb, ded = s["first run: embed"], s["first run: dedup"]
        lines += [
            "",
            f"- **dedup / embed, first run: {ded['wall_s'] / emb['wall_s']:.2f}** (wall; target ≤ 1), "
            f"{ded['cpu_s'] / max(emb['cpu_s'], 1e-9):.2f} in CPU time.",
        ]
        b = next((r for k, r in s.items() if k.startswith("baseline")), None)
        if b:
            lines.append(
                f"- The dedup before this change on the same inputs: {b['wall_s']:.1f} s = "
                f"{b['wall_s'] / emb['wall_s']:.2f}x embed; ours is {b['wall_s'] / ded['wall_s']:.1f}x faster; "
                f"same groups: {'yes' if e.get('baseline_same_groups') else 'NO'}."
            )
        lines.append(
            f"- No-op rerun: dedup {s['no-op rerun: dedup']['wall_s']:.1f} s (hashes and verdicts cached). "
            f"+10 photos: embed {s['+10 photos: embed']['wall_s']:.1f} s, dedup {s['+10 photos: dedup']['wall_s']:.1f} s."
        )
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", default="1000", help="library sizes, comma separated")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    ap.add_argument("--library-root", type=Path, default=REPO / "work" / "bench")
    ap.add_argument("--work", type=Path, default=REPO / "work" / "bench")
    ap.add_argument("--model-dir", type=Path, default=REPO / "work" / "models")
    ap.add_argument("--baseline", action="store_true", help="also run the dedup of --baseline-commit")
    ap.add_argument("--baseline-commit", default=BASELINE_COMMIT)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = ap.parse_args(argv)
    import cv2

    cv2.setNumThreads(1)
    results = {
        "date": report.utc_date(),
        "machine": report.machine_facts(),
        "command": "python benchmarks/bench_dag.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "workers": args.workers,
        "sizes": [],
    }
    for n in (int(x) for x in args.n.split(",") if x.strip()):
        results["sizes"].append(bench(n, args))
        (args.work / "bench_dag.json").write_text(json.dumps(results, indent=1))
        report.write_section(args.out, SECTION, render(results), HEADER)
    print(render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
