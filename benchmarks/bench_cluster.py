"""Benchmark: our cluster engine against the seed's method, on synthetic faces with ground truth.

* Data: ``facesets.synth.synthetic_faces(n, seed=--data-seed)`` (Zipf identity sizes,
  sub-modes, look-alike pairs, low-quality and noise faces, photos of 1-6 different people).
* Ours: ``facesets.clustering.cluster_faces(keys, emb, photo, threshold)`` with
  ``method="auto"`` (exact up to ``exact_max`` faces, graph above) and, where auto is exact,
  ``method="graph"`` too; above ``exact_max`` and up to ``--exact-ref-max`` faces also
  ``method="exact"`` as the reference; up to ``--norepair-max`` faces the graph path without
  its cluster-level repair (``repair=False``), to show what the repair buys. Cannot-link:
  faces of one photo never share a cluster. Where the seed's method runs, ours exact is also
  run without cannot-link (every face its own photo): the same unconstrained HAC as the
  seed's, so the gap between ours exact and the seed's is the constraint's alone.
* The seed's method: ``sklearn.cluster.AgglomerativeClustering(metric="precomputed",
  linkage="average", distance_threshold=t)`` on the dense float64 cosine distance matrix
  (``sklearn.metrics.pairwise.cosine_distances``); no cannot-link. Run up to ``--seed-max``
  faces (it needs ~3 x 8n² bytes: the n×n matrix, sklearn's triu index arrays and the
  condensed copy), skipped when MemAvailable is short of its estimate.
* Every run is a fresh subprocess of this script (``--worker``) that loads the table from
  ``.npy`` files, so its wall time counts only the clustering call and its peak RSS (VmHWM)
  is its own (inputs included). Other processes' CPU use during each run is measured from
  /proc/stat and reported.
* Quality vs ground truth: pairwise and BCubed precision/recall/F (``facesets.metrics``),
  cannot-link violations (pairs of faces of one photo in one cluster). Graph vs exact:
  BCubed/pairwise F of the graph labels taking the exact labels as truth, on the full set
  where exact runs, and on a subsample of whole photos (``--subsample`` faces) above
  ``--exact-ref-max``.

Sizes run in increasing order and the "cluster engine" section of ``docs/benchmarks.md``
is rewritten after every run (other sections are kept), so partial results survive.

    python benchmarks/bench_cluster.py [--sizes 5000,20000,100000,1000000] [--seed-max 20000]
        [--skew zipf|uniform|family] [--giants 0.2,0.2]

``--skew`` / ``--giants`` choose the identity-size distribution (``facesets.synth.identity_sizes``);
each choice other than the default writes a section of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import resource
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402
from facesets.clustering import EXACT_MAX  # noqa: E402
from facesets.metrics import bcubed_prf, pairwise_prf  # noqa: E402
from facesets.synth import pair_distance_percentiles, synthetic_faces  # noqa: E402

SECTION = "## cluster engine: ours vs the seed's method"
HEADER = "# Benchmarks\n"
GIB = 1024**3
TARGETS = {"t_1e5_s": 60.0, "t_1e6_s": 15 * 60.0, "peak_gib": 12.0, "speedup_20k": 10.0}


# --------------------------------------------------------------------------- worker (subprocess)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


# numpy's bundled OpenBLAS (0.3.31 here) segfaults in dgemm when the float64 result reaches
# ~4 GiB (n >= ~23 000 for X @ X.T): sklearn's cosine_distances dies there. Above that size
# the same matrix is built in row blocks (same values: 1 - cos, clipped to [0, 2], zero diagonal).
BLAS_MAX_ELEMS = 480_000_000


def dense_cosine_distances(emb: np.ndarray) -> tuple[np.ndarray, str]:
    from sklearn.metrics.pairwise import cosine_distances

    x = np.asarray(emb, np.float64)
    n = len(x)
    if n * n < BLAS_MAX_ELEMS:
        return cosine_distances(x), "sklearn cosine_distances"
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    d = np.empty((n, n), np.float64)
    step = max(1, BLAS_MAX_ELEMS // (4 * n))
    for i in range(0, n, step):
        blk = d[i : i + step]
        np.dot(x[i : i + step], x.T, out=blk)
        np.subtract(1.0, blk, out=blk)
        np.clip(blk, 0.0, 2.0, out=blk)
    np.fill_diagonal(d, 0.0)
    return d, "row blocks (OpenBLAS crashes on one >= 4 GiB product)"


def seed_method(emb: np.ndarray, threshold: float) -> tuple[np.ndarray, str]:
    """The seed's clustering: sklearn average linkage on the dense cosine distance matrix."""
    from sklearn.cluster import AgglomerativeClustering

    d, how = dense_cosine_distances(emb)
    model = AgglomerativeClustering(
        n_clusters=None, metric="precomputed", linkage="average", distance_threshold=threshold
    )
    return model.fit(d).labels_, how


def worker(args: argparse.Namespace) -> int:
    data = Path(args.data)
    emb = np.load(data / "emb.npy")
    keys = np.load(data / "keys.npy")
    photo = np.load(data / "photo.npy")
    if args.subset:
        idx = np.load(data / args.subset)
        emb, keys, photo = emb[idx], keys[idx], photo[idx]
    if args.worker == "seed":
        import sklearn.cluster
        import sklearn.metrics.pairwise  # noqa: F401
    else:
        import faiss  # noqa: F401
        import scipy.cluster.hierarchy  # noqa: F401

        from facesets.clustering import cluster_faces
    rss_in = _status_kib("VmRSS")
    t0 = time.perf_counter()
    if args.worker == "seed":
        labels, how = seed_method(emb, args.threshold)
        used = f"seed: distance matrix by {how}"
    else:
        kw = {} if args.k is None else {"k": args.k}
        method = {"exact-nocl": "exact", "graph-norepair": "graph"}.get(args.worker, args.worker)
        if args.worker == "graph-norepair":
            kw["repair"] = False
        groups = np.arange(len(keys)) if args.worker == "exact-nocl" else photo  # no-cl: a photo per face
        res = cluster_faces(keys, emb, groups, args.threshold, method=method, **kw)
        labels, used = res.labels, res.method
    seconds = time.perf_counter() - t0
    np.save(args.result + ".labels.npy", np.asarray(labels, np.int64))
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out = {
        "seconds": seconds,
        "method_used": used,
        # VmHWM, not ru_maxrss: ru_maxrss survives execve, so it would report the parent's peak
        "peak_rss_kib": _status_kib("VmHWM"),
        "input_rss_kib": rss_in,
        "cpu_s": ru.ru_utime + ru.ru_stime,
        "clustering_sha": hashlib.sha256((REPO / "facesets" / "clustering.py").read_bytes()).hexdigest()[:12],
    }
    Path(args.result).write_text(json.dumps(out))
    return 0


# --------------------------------------------------------------------------- parent


def _busy_jiffies() -> tuple[int, int]:
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return sum(v) - idle, sum(v)


def mem_available() -> int:
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def other_load(window_s: float = 3.0) -> float:
    """CPUs busy over ``window_s`` (this process sleeps meanwhile, so: other processes)."""
    b0, t0 = _busy_jiffies()
    time.sleep(window_s)
    b1, t1 = _busy_jiffies()
    return (b1 - b0) / max(t1 - t0, 1) * (os.cpu_count() or 1)


def wait_idle(max_wait_s: float, limit: float = 0.3) -> float:
    """Wait (up to ``max_wait_s``) until other processes use less than ``limit`` CPUs."""
    deadline = time.monotonic() + max_wait_s
    load = other_load()
    while load > limit and time.monotonic() < deadline:
        load = other_load()
    return load


def run_worker(method: str, data: Path, threshold: float, k: int | None, timeout: float, subset: str = "") -> dict:
    tag = f"{method}{'-' + Path(subset).stem if subset else ''}"
    result = data / f"result-{tag}.json"
    for p in (result, Path(str(result) + ".labels.npy")):
        p.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", method, "--data", str(data)]
    cmd += ["--result", str(result), "--threshold", str(threshold)]
    if k is not None:
        cmd += ["--k", str(k)]
    if subset:
        cmd += ["--subset", subset]
    hz = os.sysconf("SC_CLK_TCK")
    ncpu = os.cpu_count() or 1
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    b0, _ = _busy_jiffies()
    t0 = time.perf_counter()
    out: dict = {"method": method}
    errlog = Path(str(result) + ".stderr")
    hwm = 0  # the worker's VmHWM, sampled while it runs (known even if it is killed)
    with open(errlog, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        try:
            while True:
                with contextlib.suppress(OSError, ValueError), open(f"/proc/{proc.pid}/status") as fh:
                    hwm = max([hwm] + [int(ln.split()[1]) for ln in fh if ln.startswith("VmHWM:")])
                try:
                    proc.wait(timeout=1.0)
                    break
                except subprocess.TimeoutExpired:
                    if time.perf_counter() - t0 > timeout:
                        proc.kill()
                        proc.wait()
                        break
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    wall = time.perf_counter() - t0
    ok = proc.returncode == 0 and result.exists()
    if not ok:
        if wall > timeout:
            out["error"] = f"timed out after {timeout:.0f} s (peak RSS by then {hwm / 1024**2:.2f} GiB)"
        else:
            sig = f" (signal {-proc.returncode})" if proc.returncode < 0 else ""
            tail = errlog.read_text(errors="replace")[-400:].strip().replace("\n", " / ").replace("|", "/")
            out["error"] = f"exit {proc.returncode}{sig}: {tail}"
        out["peak_rss_kib_sampled"] = hwm
    b1, _ = _busy_jiffies()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    child_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    other = max(0.0, ((b1 - b0) / hz - child_cpu) / max(wall, 1e-9))
    out["other_load_cpus"] = min(other, float(ncpu))
    out["process_wall_s"] = wall
    if ok:
        out |= json.loads(result.read_text())
        out["labels"] = np.load(str(result) + ".labels.npy")
    return out


def violations(photo: np.ndarray, labels: np.ndarray) -> int:
    """Pairs of faces of one photo that share a cluster."""
    _, inv = np.unique(labels, return_inverse=True)
    _, c = np.unique(photo.astype(np.int64) * (int(inv.max()) + 1) + inv, return_counts=True)
    return int((c * (c - 1) // 2).sum())


def score(run: dict, truth: np.ndarray, photo: np.ndarray) -> dict:
    lab = run.pop("labels")
    run["clusters"] = len(np.unique(lab))
    run["pairwise"] = pairwise_prf(truth, lab)
    run["bcubed"] = bcubed_prf(truth, lab)
    run["violations"] = violations(photo, lab)
    return lab


def photo_subsample(photo: np.ndarray, target: int, seed: int) -> np.ndarray:
    """Rows of randomly chosen whole photos, about ``target`` faces."""
    rng = np.random.default_rng(seed)
    ids = np.unique(photo)
    order = rng.permutation(ids)
    sizes = np.bincount(photo)[order]
    take = order[: int(np.searchsorted(np.cumsum(sizes), target)) + 1]
    return np.flatnonzero(np.isin(photo, take))


def summarize_truth(f) -> dict:
    sizes = np.bincount(f.identity)
    sizes = sizes[sizes > 0]
    return {
        "identities": len(sizes),
        "largest": int(sizes.max()),
        "singleton_ids": int((sizes == 1).sum()),
        "ids_ge_1000": int((sizes >= 1000).sum()),
        "ids_ge_100": int((sizes >= 100).sum()),
        "photos": len(np.unique(f.photo)),
        "noise": int(f.noise.sum()),
        "low_quality": int(f.low_quality.sum()),
        "lookalike_pairs": int((f.twin >= 0).sum() // 2),
    }


def nearest_stranger(f, threshold: float, n_query: int = 2000, seed: int = 0) -> dict:
    """Share of sampled faces whose nearest face of another identity is under the threshold."""
    import faiss

    index = faiss.IndexFlatIP(f.emb.shape[1])
    index.add(f.emb)
    rng = np.random.default_rng(seed)
    out = {}
    for kind, pool in (("all", np.arange(len(f))), ("noise", np.flatnonzero(f.noise))):
        if not len(pool):
            continue
        q = rng.choice(pool, min(n_query, len(pool)), replace=False)
        sim, nb = index.search(f.emb[q], 64)
        other = (f.identity[nb] != f.identity[q][:, None]) & (nb >= 0)
        d = np.where(other, 1.0 - sim, np.inf).min(1)
        out[kind] = {"below": float((d < threshold).mean()), "p50": float(np.median(d)), "n": len(q)}
    return out


def bench_size(n: int, args: argparse.Namespace, results: dict, flush) -> None:
    entry: dict = {"n": n, "runs": [], "notes": []}
    results["sizes"].append(entry)
    t0 = time.perf_counter()
    f = synthetic_faces(n, seed=args.data_seed, **skew_kwargs(args.skew, args.giants))
    entry["gen_s"] = time.perf_counter() - t0
    entry["truth"] = summarize_truth(f)
    entry["distances"] = pair_distance_percentiles(f, n_pairs=100_000)
    entry["stranger"] = nearest_stranger(f, args.threshold)
    data = Path(args.work) / f"n{n}"
    data.mkdir(parents=True, exist_ok=True)
    np.save(data / "emb.npy", f.emb)
    np.save(data / "keys.npy", f.keys)
    np.save(data / "photo.npy", f.photo)
    truth, photo = f.identity, f.photo
    del f
    flush()
    labels: dict[str, np.ndarray] = {}

    def do(name: str, method: str, subset: str = "", sub_truth=None, sub_photo=None) -> dict | None:
        if args.wait_idle > 0:
            load = wait_idle(args.wait_idle)
            print(f"[n={n}] other load before the run: {load:.2f} CPUs", flush=True)
        print(f"[n={n}] {name} ...", flush=True)
        results["current"] = f"{name} at n={fmt_n(n)}, started {utc_date()}"
        run = run_worker(method, data, args.threshold, args.k, args.run_timeout, subset)
        run["name"] = name
        if "error" in run:
            print(f"[n={n}] {name}: {run['error']}", flush=True)
        else:
            t, p = (truth, photo) if sub_truth is None else (sub_truth, sub_photo)
            labels[name] = score(run, t, p)
            print(
                f"[n={n}] {name}: {run['seconds']:.1f} s, peak {run['peak_rss_kib'] / 1024**2:.2f} GiB, "
                f"{run['clusters']} clusters, bcubed F {run['bcubed'][2]:.4f}, pairwise F {run['pairwise'][2]:.4f}, "
                f"violations {run['violations']}, other load {run['other_load_cpus']:.2f}",
                flush=True,
            )
        (entry["sub_runs"] if subset else entry["runs"]).append(run)
        results.pop("current", None)
        flush()
        return run

    auto = do("ours (auto)", "auto")
    auto_method = (auto or {}).get("method_used", "exact" if n <= EXACT_MAX else "graph")
    graph_name = "ours (auto)" if auto_method == "graph" else "ours (graph)"
    exact_name = "ours (auto)" if auto_method == "exact" else "ours (exact)"
    if auto_method != "graph":
        do("ours (graph)", "graph")
    if n <= args.norepair_max:
        do("ours (graph, no repair)", "graph-norepair")
    if auto_method != "exact" and n <= args.exact_ref_max:
        do("ours (exact)", "exact")
    if n <= args.seed_max:
        need = 3 * 8 * n * n
        avail = mem_available()
        if avail and avail < need * 1.15:
            entry["notes"].append(
                f"seed's method skipped: needs ~{need / GIB:.1f} GiB, {avail / GIB:.1f} GiB available"
            )
        else:
            do("ours (exact, no cannot-link)", "exact-nocl")
            do("seed's method (sklearn)", "seed")

    def agreement(ref: np.ndarray, other: np.ndarray, size: int = n) -> dict:
        return {"n": size, "bcubed": bcubed_prf(ref, other), "pairwise": pairwise_prf(ref, other)}

    if exact_name in labels:
        ex = labels[exact_name]
        for name, key in ((graph_name, "graph_vs_exact"), ("ours (graph, no repair)", "norepair_vs_exact")):
            if name in labels:
                entry[key] = agreement(ex, labels[name])
        seed = labels.get("seed's method (sklearn)")
        if seed is not None:
            entry["seed_vs_exact"] = agreement(ex, seed)
            if "ours (exact, no cannot-link)" in labels:
                entry["nocl_vs_seed"] = agreement(seed, labels["ours (exact, no cannot-link)"])
    if exact_name not in labels and n > EXACT_MAX and args.subsample:
        idx = photo_subsample(photo, args.subsample, seed=args.data_seed + 1)
        np.save(data / "subsample.npy", idx)
        st, sp = truth[idx], photo[idx]
        entry["sub_runs"] = []
        entry["subsample_n"] = len(idx)
        sub: dict[str, np.ndarray] = {}
        for method in ("exact", "graph"):
            r = do(f"subsample: ours ({method})", method, "subsample.npy", st, sp)
            if r is not None and "error" not in r:
                sub[method] = labels[f"subsample: ours ({method})"]
        if len(sub) == 2:
            entry["graph_vs_exact"] = agreement(sub["exact"], sub["graph"], len(idx))
        flush()
    for p in data.glob("result-*"):
        p.unlink()


# --------------------------------------------------------------------------- report


def machine() -> dict:
    import faiss
    import scipy
    import sklearn

    return {
        **report.machine_facts(),
        "versions": (
            f"Python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, "
            f"scikit-learn {sklearn.__version__}, faiss-cpu {faiss.__version__}"
        ),
    }


utc_date = report.utc_date


def verdict(flag: bool | None, detail: str) -> str:
    if flag is None:
        return f"**NOT MEASURED** ({detail})"
    return f"{'**PASS**' if flag else '**FAIL**'} ({detail})"


def fmt_n(n: int) -> str:
    return f"{n:,}".replace(",", " ")


def run_row(r: dict) -> str:
    if "error" in r:
        return f"| {r['name']} | {r['error']} | | | | | | | | | | |"
    pw, bc = r["pairwise"], r["bcubed"]
    name = r["name"] + (f" → {r['method_used']}" if r["method"] == "auto" else "")
    if r["method"] == "seed" and "row blocks" in r.get("method_used", ""):
        name += " ¹"
    return (
        f"| {name} | {r['seconds']:.2f} | {r['peak_rss_kib'] / 1024**2:.2f} | {fmt_n(r['clusters'])} | "
        f"{pw[0]:.4f} | {pw[1]:.4f} | {pw[2]:.4f} | {bc[0]:.4f} | {bc[1]:.4f} | {bc[2]:.4f} | "
        f"{fmt_n(r['violations'])} | {r['other_load_cpus']:.2f} |"
    )


TABLE_HEAD = (
    "| run | seconds | peak RSS GiB | clusters | pair P | pair R | pair F | BCubed P | BCubed R | BCubed F "
    "| cannot-link violations | other load (CPUs) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def find(entry: dict, name: str) -> dict | None:
    return next((r for r in entry["runs"] if r["name"] == name and "error" not in r), None)


def targets(results: dict) -> list[str]:
    by_n = {e["n"]: e for e in results["sizes"]}
    lines = []
    e = by_n.get(100_000)
    r = find(e, "ours (auto)") if e else None
    lines.append(
        "- 1e5 faces < 60 s (ours, auto): "
        + verdict(None if r is None else r["seconds"] < 60, f"{r['seconds']:.1f} s" if r else "not run")
    )
    e = by_n.get(1_000_000)
    r = find(e, "ours (auto)") if e else None
    err = next((x.get("error") for x in (e or {"runs": []})["runs"] if x["name"] == "ours (auto)"), None)
    lines.append(
        "- 1e6 faces < 15 min (ours, auto): "
        + verdict(
            None if r is None and not err else (r is not None and r["seconds"] < 900),
            f"{r['seconds'] / 60:.1f} min" if r else (err or "not run"),
        )
    )
    ours = [
        (x.get("peak_rss_kib", x.get("peak_rss_kib_sampled", 0)) / 1024**2, e["n"], x["name"], "error" in x)
        for e in results["sizes"]
        for x in e["runs"] + e.get("sub_runs", [])
        if x["method"] != "seed"
    ]
    if ours:
        peak, n, name, _ = max(o for o in ours if not o[3]) if any(not o[3] for o in ours) else (0, 0, "", 0)
        detail = f"max {peak:.2f} GiB = {peak * GIB / 1e9:.2f} GB, {name} at n={fmt_n(n)}"
        unfinished = [o for o in ours if o[3]]
        flag = peak * GIB < 12e9
        if unfinished:
            detail += "; unfinished: " + ", ".join(
                f"{nm} at n={fmt_n(nn)} had reached {pk:.2f} GiB when it was stopped" for pk, nn, nm, _ in unfinished
            )
            flag = False if any(pk * GIB >= 12e9 for pk, *_ in unfinished) else flag
        text = verdict(flag, detail)
        if unfinished and flag:
            text = text.replace("**PASS**", "**PASS where measured**")
        lines.append("- Peak memory < 12 GB (every run of ours): " + text)
    cmp = []
    for e in results["sizes"]:
        s = find(e, "seed's method (sklearn)")
        if s is None:
            continue
        for name in ("ours (auto)", "ours (graph)", "ours (exact, no cannot-link)"):
            o = find(e, name)
            if o is not None:
                cmp.append((e["n"], name, o["bcubed"][2], s["bcubed"][2]))
    if cmp:
        main = [c for c in cmp if c[1] == "ours (auto)"]
        flag = all(o >= s for _, _, o, s in main) if main else None
        detail = "; ".join(f"n={fmt_n(n)} {name} {o:.4f} vs seed {s:.4f}" for n, name, o, s in cmp)
        below = [n for n, _, o, s in main if o < s]
        unconstrained = {n: o >= s for n, name, o, s in cmp if name == "ours (exact, no cannot-link)"}
        if below and all(unconstrained.get(n, False) for n in below):
            detail += (
                f". Below at n={', '.join(fmt_n(n) for n in below)} only with cannot-link: there, ours without "
                "cannot-link is not below the seed's"
            )
        lines.append("- BCubed F of ours (auto) >= the seed's, same threshold: " + verdict(flag, detail))
    else:
        lines.append("- BCubed F of ours >= the seed's: " + verdict(None, "the seed's method did not run"))
    e = by_n.get(20_000)
    s = find(e, "seed's method (sklearn)") if e else None
    o = find(e, "ours (auto)") if e else None
    g = find(e, "ours (graph)") if e else None
    if s and o:
        detail = f"seed {s['seconds']:.1f} s / ours auto ({o['method_used']}) {o['seconds']:.1f} s = {s['seconds'] / o['seconds']:.1f}x"
        if g:
            detail += f"; ours graph {g['seconds']:.1f} s = {s['seconds'] / g['seconds']:.1f}x"
        lines.append(
            "- >= 10x faster than the seed's method at 20k (ours, auto): "
            + verdict(s["seconds"] / o["seconds"] >= 10, detail)
        )
    else:
        lines.append("- >= 10x faster than the seed's method at 20k: " + verdict(None, "not run"))
    return lines


def code_versions(results: dict) -> list[str]:
    shas: dict[str, list[str]] = {}
    for e in results["sizes"]:
        for r in e["runs"] + e.get("sub_runs", []):
            if r["method"] != "seed" and r.get("clustering_sha"):
                shas.setdefault(r["clustering_sha"], []).append(f"{r['name']} n={fmt_n(e['n'])}")
    if len(shas) <= 1:
        return [f"- `facesets/clustering.py` sha256 {sha}… for every run of ours." for sha in shas]
    return [
        "- `facesets/clustering.py` changed during the run: "
        + "; ".join(f"sha256 {sha}… for {', '.join(v)}" for sha, v in shas.items())
    ]


def render(results: dict) -> str:
    m = results["machine"]
    out = [
        section_title(results.get("skew", "zipf"), results.get("giants", "")),
        "",
        f"- Date: {results['date']}" + ("" if results.get("done") or results.get("interrupted") else " (in progress)"),
        f"- Machine: {m['cpu']}; {m['cores']}; {m['ram']} RAM; {m['os']}",
        f"- Software: {m['versions']}",
        f"- Command: `{results['command']}`",
        f"- Threshold {results['threshold']} (cosine distance, merge while < threshold); data seed "
        f"{results['data_seed']}; `exact_max` = {fmt_n(EXACT_MAX)}; each run in its own process "
        "(seconds = the clustering call only; peak RSS = that process's VmHWM, inputs included).",
        "- Data: " + data_note(results.get("skew", "zipf"), results.get("giants", "")) + ", sub-modes, "
        "look-alike pairs, 10% low-quality faces, 3% noise faces, photos of 1-6 different people).",
        "- Quality vs ground truth identities; cannot-link violations = pairs of faces of one photo in one "
        "cluster (ours forbids them, the seed's method has no such constraint). "
        '"other load" = CPU use of other processes during the run, in CPUs of '
        f"{os.cpu_count()}: above ~0.2 the machine was not idle and times are inflated.",
        *code_versions(results),
        "",
        "Targets:",
        "",
        *targets(results),
        "",
    ]
    if results.get("current"):
        out += [f"Running now: {results['current']}.", ""]
    if results.get("interrupted"):
        out += [f"**Incomplete run**: {results['interrupted']} (runs not shown did not finish).", ""]
    for e in results["sizes"]:
        t = e["truth"]
        out += [f"### n = {fmt_n(e['n'])}", ""]
        out.append(
            f"Ground truth: {fmt_n(t['identities'])} identities (largest {fmt_n(t['largest'])}, "
            f"{t['ids_ge_1000']} with >= 1000 faces, {t['ids_ge_100']} with >= 100, {fmt_n(t['singleton_ids'])} "
            f"singletons incl. {fmt_n(t['noise'])} noise faces), {fmt_n(t['low_quality'])} low-quality faces, "
            f"{t['lookalike_pairs']} look-alike pairs, {fmt_n(t['photos'])} photos; generated in {e['gen_s']:.1f} s."
        )
        d = e["distances"]
        parts = []
        for kind in ("same", "same_good", "lookalike", "different"):
            if d.get(kind):
                v = d[kind]
                parts.append(
                    f"{kind} p5/p25/p50/p75/p95 {v['p5']:.2f}/{v['p25']:.2f}/{v['p50']:.2f}/{v['p75']:.2f}/{v['p95']:.2f}"
                )
        out += ["", "Cosine distances of random face pairs: " + "; ".join(parts) + "."]
        if e.get("stranger"):
            st = e["stranger"]
            out[-1] += (
                " Faces with a face of another identity closer than the threshold (among their 64 nearest): "
                f"{st['all']['below']:.1%}"
                + (
                    f"; noise faces: {st['noise']['below']:.1%} (median distance to the nearest stranger "
                    f"{st['noise']['p50']:.2f})"
                    if "noise" in st
                    else ""
                )
                + f" (samples of {st['all']['n']})."
            )
        out.append("")
        out += [TABLE_HEAD, *[run_row(r) for r in e["runs"]]]
        if e.get("sub_runs"):
            out += [
                f"| *subsample of whole photos, {fmt_n(e.get('subsample_n', 0))} faces:* | | | | | | | | | | | |",
                *[run_row(r) for r in e["sub_runs"]],
            ]
        out.append("")
        s = find(e, "seed's method (sklearn)")
        for name in ("ours (auto)", "ours (graph)"):
            o = find(e, name)
            if s and o:
                out.append(f"- Speed-up of {name} over the seed's method: {s['seconds'] / o['seconds']:.1f}x.")
        for key, what in (("graph_vs_exact", "Graph"), ("norepair_vs_exact", "Graph without its repair")):
            if key in e:
                gv = e[key]
                where = "full set" if gv["n"] == e["n"] else f"subsample of {fmt_n(gv['n'])} faces"
                out.append(
                    f"- {what} vs exact ({where}, exact labels as truth): BCubed P/R/F "
                    f"{gv['bcubed'][0]:.4f}/{gv['bcubed'][1]:.4f}/{gv['bcubed'][2]:.4f}, "
                    f"pairwise F {gv['pairwise'][2]:.4f}."
                )
        if "seed_vs_exact" in e:
            sv = e["seed_vs_exact"]
            out.append(
                f"- The seed's method vs ours exact (exact as truth): BCubed F {sv['bcubed'][2]:.4f}, "
                f"pairwise F {sv['pairwise'][2]:.4f}."
            )
        if "nocl_vs_seed" in e:
            nv = e["nocl_vs_seed"]
            out.append(
                "- Ours exact *without* cannot-link (every face its own photo) vs the seed's method (seed as "
                f"truth): BCubed F {nv['bcubed'][2]:.6f}, pairwise F {nv['pairwise'][2]:.6f}: the same "
                "unconstrained average-linkage HAC, so any gap between ours (exact) and the seed's is cannot-link."
            )
        out += [f"- {note}" for note in e["notes"]]
        if any(r.get("method") == "seed" and "row blocks" in r.get("method_used", "") for r in e["runs"]):
            out.append(
                "- ¹ sklearn's `cosine_distances` dies here (numpy's OpenBLAS segfaults on a >= 4 GiB "
                "`X @ X.T`), so the same dense float64 matrix was built in row blocks; the clustering "
                "is sklearn's as everywhere else."
            )
        seeds = [(x["n"], r) for x in results["sizes"] for r in x["runs"] if r["method"] == "seed" and "error" not in r]
        if e["n"] > results.get("seed_max", 0) and seeds:
            n0, r0 = max(seeds, key=lambda t: t[0])
            est = r0["peak_rss_kib"] / 1024**2 * (e["n"] / n0) ** 2
            out.append(
                f"- The seed's method not run (n > --seed-max); scaling its peak at n={fmt_n(n0)} by n², "
                f"it would need ~{est:.0f} GiB."
            )
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def skew_kwargs(skew: str, giants: str) -> dict:
    """``synthetic_faces`` arguments for ``--skew`` and ``--giants`` (comma-separated shares)."""
    return {"skew": skew, "giants": tuple(float(g) for g in giants.split(",") if g.strip())}


def section_title(skew: str, giants: str) -> str:
    """The default data keeps the original section; each other skew gets a section of its own."""
    if skew == "zipf" and not giants:
        return SECTION
    return f"## cluster engine, identity sizes: {skew}" + (f" + giants {giants}" if giants else "")


def data_note(skew: str, giants: str) -> str:
    sizes = {
        "zipf": "Zipf identity sizes with a singleton tail",
        "uniform": "uniform identity sizes 1-40",
        "family": "a family library: 2-5 identities with 10-25 % of the faces each, the rest Zipf",
    }[skew]
    if giants:
        sizes += f", plus single identities holding {giants} of the faces"
    return f"`facesets.synth.synthetic_faces(skew={skew!r}{', giants=(' + giants + ')' if giants else ''})` ({sizes}"


def write_section(out: Path, section: str, title: str = SECTION) -> None:
    """Replace (or add) our section in ``out``, keeping every other section."""
    report.write_section(out, title, section, HEADER)


def _jsonable(o):
    if isinstance(o, dict):
        return {k: _jsonable(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.generic):
        return o.item()
    return o


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="5000,20000,100000,1000000")
    ap.add_argument("--seed-max", type=int, default=20000, help="largest n to run the seed's method on")
    ap.add_argument("--threshold", type=float, default=0.55)
    ap.add_argument("--k", type=int, default=None, help="kNN degree for the graph path (default: the API's)")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--subsample", type=int, default=EXACT_MAX, help="graph vs exact subsample above --exact-ref-max")
    ap.add_argument(
        "--exact-ref-max",
        type=int,
        default=100_000,
        help="largest n to run the exact path as a reference above exact_max",
    )
    ap.add_argument(
        "--norepair-max", type=int, default=100_000, help="largest n to also run the graph path without its repair"
    )
    ap.add_argument("--run-timeout", type=float, default=3600.0, help="seconds per run before it is killed")
    ap.add_argument("--wait-idle", type=float, default=0.0, help="wait up to this many seconds for an idle CPU per run")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    ap.add_argument("--work", default=None, help="default: work/bench_cluster[-<skew>]")
    ap.add_argument("--skew", choices=["zipf", "uniform", "family"], default="zipf", help="identity-size distribution")
    ap.add_argument("--giants", default="", help="shares of single giant identities, e.g. 0.2,0.2")
    ap.add_argument(
        "--worker", choices=["auto", "exact", "graph", "seed", "exact-nocl", "graph-norepair"], help=argparse.SUPPRESS
    )
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--subset", default="", help=argparse.SUPPRESS)
    ap.add_argument("--render-only", action="store_true", help="rewrite the section from --work/results.json")
    args = ap.parse_args(argv)
    if args.work is None:
        tag = (
            ""
            if args.skew == "zipf" and not args.giants
            else f"-{args.skew}" + (f"-g{args.giants}" if args.giants else "")
        )
        args.work = str(REPO / "work" / f"bench_cluster{tag}")
    if args.worker:
        return worker(args)
    if args.render_only:
        saved = json.loads((Path(args.work) / "results.json").read_text())
        write_section(args.out, render(saved), section_title(saved.get("skew", "zipf"), saved.get("giants", "")))
        return 0

    sizes = sorted(int(float(s)) for s in args.sizes.split(",") if s.strip())
    argv_shown = sys.argv[1:] if argv is None else argv
    results = {
        "date": utc_date(),
        "machine": machine(),
        "command": "python benchmarks/bench_cluster.py " + shlex.join(argv_shown),
        "threshold": args.threshold,
        "data_seed": args.data_seed,
        "seed_max": args.seed_max,
        "skew": args.skew,
        "giants": args.giants,
        "sizes": [],
    }
    raw = Path(args.work) / "results.json"
    raw.parent.mkdir(parents=True, exist_ok=True)

    def flush() -> None:
        raw.write_text(json.dumps(_jsonable(results), indent=1))
        write_section(args.out, render(results), section_title(args.skew, args.giants))

    def on_term(signum, frame) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        for n in sizes:
            bench_size(n, args, results, flush)
    except KeyboardInterrupt:
        results["interrupted"] = f"stopped at {utc_date()} while running {results.pop('current', '?')}"
        print(results["interrupted"], flush=True)
        flush()
        return 130
    results["done"] = True
    flush()
    print(render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
