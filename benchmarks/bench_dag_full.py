"""Benchmark: the whole workflow (`snakemake --profile wsl all`) on generated photo libraries.

For every ``--n`` (photos), in a fresh temp directory under ``--work``:

1. a library from ``benchmarks/build_library.py`` (``--size``, default 1280x960: the demo
   photos' own resolution) copied into ``photos/``, a source YAML (kind folder,
   ``refine.min_faces: 3`` as the demo's) and a config with relative roots;
2. the full run, exactly as the README runs a library from another directory:
   ``snakemake -s <code>/Snakefile --profile wsl all --configfile config.yaml``;
3. ``snakemake -n`` (must say nothing to do), then the same full command again: the no-op rerun;
4. 10 new photos (variants with another seed, same size): the dry run's jobs and reasons (what
   reruns, and why), then the run; then a dry run again (must say nothing to do).

The code run is a snapshot of one commit (``git archive``, ``--commit``, default HEAD) with
``PYTHONPATH`` pointing at it, so other engineers' uncommitted edits in the checkout never leak
into a run, and the section names the commit measured.

Per job (one ``facesets <subcommand>`` process under this run's snakemake), a /proc poller
(every ``--poll`` s) records wall time, CPU time (the job's process tree, reaped children
included) and peak RSS (the kernel's VmHWM of the job's process, or the largest sum of its
tree's RSS over the samples, whichever is larger), plus how busy the whole machine was
meanwhile. What is not in a job is Snakemake's own time (DAG, rerun checks, state files).

Each size's result is saved as ``<work>/bench_dag_full-<n>.json``; the section "whole DAG on
generated libraries (issue #18)" of docs/benchmarks.md is rendered from every saved size, with
per-stage scaling exponents between consecutive sizes (``--render`` only re-renders).

    python benchmarks/bench_dag_full.py --n 1000            # then --n 10000 (the section has both)
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_library import DEFAULT_PHOTOS, make_variant, plan  # noqa: E402
from build_library import build_library as build  # noqa: E402

import report  # noqa: E402

SECTION = "## whole DAG on generated libraries (issue #18)"
HEADER = "# Benchmarks\n"
SOURCE = "bench"
# `facesets <subcommand>` -> the rule that runs it (rules/*.smk)
RULE_OF = {
    "stage": "stage",
    "embed": "embed_shard",
    "merge-shards": "embed",
    "summary": "embed_summary",
    "cluster": "cluster",
    "enrich": "enrich",
    "dedup": "dedup",
    "refine": "refine",
    "export-swap": "export",
    "manifest-merge": "manifest_merge",
    "library-report": "library_report",
    "contact-sheets": "contact_sheets",
    "run-stats": "run_stats",
}
STAGES = list(dict.fromkeys(RULE_OF.values()))
NOTHING = "Nothing to be done"
HZ = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
STARTUP_BOUND_S = 5.0  # a job of less CPU than this is mostly interpreter start-up and imports


# ------------------------------------------------------------------ /proc sampling


def _stat(pid: int) -> tuple[int, float, int] | None:
    """(ppid, CPU seconds incl. reaped children, RSS kB) of a process, or None when gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            rest = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # fields after the name: state ppid ... utime(12) stime(13) cutime(14) cstime(15) ... rss(22)
    return int(rest[1]), sum(int(x) for x in rest[11:15]) / HZ, int(rest[21]) * PAGE_KB


def _hwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next((int(ln.split()[1]) for ln in fh if ln.startswith("VmHWM:")), 0)
    except OSError:
        return 0


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return []


def _busy_s() -> float:
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:]]
    return (sum(v) - v[3] - v[4]) / HZ


def job_label(argv: list[str]) -> tuple[str, str] | None:
    """(rule, detail) when argv is `python .../facesets <subcommand> ...`, else None."""
    for i, a in enumerate(argv[:3]):
        if os.path.basename(a) == "facesets" and i + 1 < len(argv):
            sub = argv[i + 1]
            detail = argv[argv.index("--shard") + 1] if "--shard" in argv else ""
            return RULE_OF.get(sub, sub), detail
    return None


@dataclasses.dataclass
class Job:
    pid: int
    rule: str
    detail: str
    start: float
    end: float
    busy0: float
    busy1: float
    cpu_s: float = 0.0
    hwm_kb: int = 0
    tree_rss_kb: int = 0

    def row(self) -> dict:
        wall = max(self.end - self.start, 1e-9)
        return {
            "rule": self.rule,
            "detail": self.detail,
            "wall_s": round(wall, 2),
            "cpu_s": round(self.cpu_s, 2),
            "peak_rss_mb": round(max(self.hwm_kb, self.tree_rss_kb) / 1024, 1),
            "machine_busy_cpus": round((self.busy1 - self.busy0) / wall, 2),
            "start_s": round(self.start, 2),
        }


class Poller(threading.Thread):
    """Samples the process tree under ``root`` every ``interval`` seconds until stopped."""

    def __init__(self, root: int, interval: float, t0: float) -> None:
        super().__init__(daemon=True)
        self.root, self.interval, self.t0 = root, interval, t0
        self.jobs: dict[int, Job] = {}
        self.stop = threading.Event()

    def sample(self) -> None:
        now, busy = time.perf_counter() - self.t0, _busy_s()
        procs = {}
        for name in os.listdir("/proc"):
            if name.isdigit() and (st := _stat(int(name))):
                procs[int(name)] = st
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in procs.items():
            children.setdefault(ppid, []).append(pid)

        def tree(pid: int) -> list[int]:
            out, todo = [], [pid]
            while todo:
                p = todo.pop()
                out.append(p)
                todo.extend(children.get(p, []))
            return out

        for pid in tree(self.root):
            job = self.jobs.get(pid)
            if job is None:
                label = job_label(_cmdline(pid))
                if label is None:
                    continue
                job = self.jobs[pid] = Job(pid, *label, start=now, end=now, busy0=busy, busy1=busy)
            members = tree(pid)
            job.end, job.busy1 = now, busy
            job.cpu_s = max(job.cpu_s, sum(procs[p][1] for p in members if p in procs))
            job.tree_rss_kb = max(job.tree_rss_kb, sum(procs[p][2] for p in members if p in procs))
            job.hwm_kb = max(job.hwm_kb, _hwm_kb(pid))

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.interval)


# ------------------------------------------------------------------ one workflow command


def run_command(args: list[str], cwd: Path, env: dict, log: Path, interval: float) -> dict:
    """Run snakemake; wall, CPU (all descendants), other processes' load, per-job rows, output."""
    cmd = [str(REPO / ".venv" / "bin" / "snakemake"), *args]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0, b0 = time.perf_counter(), _busy_s()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        poller = Poller(proc.pid, interval, t0)
        poller.start()
        rc = proc.wait()
        poller.stop.set()
        poller.join()
    wall, busy = time.perf_counter() - t0, _busy_s() - b0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    out = log.read_text(errors="replace")
    if rc != 0:
        raise SystemExit(f"snakemake failed ({rc}): {' '.join(cmd)} in {cwd}\n{out[-3000:]}")
    jobs = sorted((j.row() for j in poller.jobs.values()), key=lambda r: r["start_s"])
    return {
        "command": "snakemake " + " ".join(args),
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "other_cpus": round(max(0.0, busy - cpu) / wall, 2),
        "jobs": jobs,
        "nothing_to_do": NOTHING in out,
        "planned": planned_jobs(out),
    }


def planned_jobs(out: str) -> list[dict]:
    """The jobs a snakemake output announces (`rule X:` blocks) with their `reason:` lines."""
    jobs: list[dict] = []
    for line in out.splitlines():
        if m := re.match(r"^(?:localrule|rule) (\w+):$", line.strip()):
            jobs.append({"rule": m.group(1), "reason": "", "wildcards": ""})
        elif jobs and (m := re.match(r"^\s*(reason|wildcards): (.*)$", line)):
            jobs[-1][m.group(1)] = m.group(2).strip()
    return [j for j in jobs if j["rule"] != "all"]


def du_mb(path: Path) -> float:
    """Disk use of a tree in MiB, hard links counted once (du's rule)."""
    res = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True)
    return round(int(res.stdout.split()[0]) / 1024, 1) if res.returncode == 0 else float("nan")


# ------------------------------------------------------------------ one library size


def snapshot(commit: str, dest: Path) -> str:
    """The committed tree of ``commit`` extracted to ``dest``; returns the short hash."""
    sha = subprocess.run(
        ["git", "rev-parse", "--short", commit], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    dest.mkdir(parents=True)
    archive = subprocess.Popen(["git", "archive", "--format=tar", sha], cwd=REPO, stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise SystemExit(f"git archive {sha} failed")
    return sha


def write_config(tmp: Path, model_dir: Path) -> Path:
    """A source YAML and a config with relative roots, as a user writes them (README, step 2-3)."""
    (tmp / "sources").mkdir()
    (tmp / "sources" / f"{SOURCE}.yaml").write_text(
        f"name: {SOURCE}\nkind: folder\npath: photos\n"
        "overrides:\n  refine:\n    min_faces: 3   # as the demo source: a few distinct photos per person\n"
    )
    cfg = tmp / "config.yaml"
    cfg.write_text(f"work_root: work\noutput_root: out\nmodel_dir: {model_dir}\nsources:\n  - sources/{SOURCE}.yaml\n")
    return cfg


def library(n: int, size: tuple[int, int], args: argparse.Namespace) -> list[Path]:
    """The n photos: the first n of a larger library built with the same seed and size when there is one
    (plan() is a prefix: the first n variants of a larger plan are the n-photo plan), else built."""
    for marker in sorted(args.library_root.glob(f"library-*-{size[0]}/library.json")):
        info = json.loads(marker.read_text())
        p = info["params"]
        if p["seed"] == args.seed and p["size"] == list(size) and p["n"] > n:
            mine = [
                dataclasses.asdict(v) | {"out": Path(v.out).name}
                for v in plan(args.photos, marker.parent, n, args.seed)
            ]
            if mine == [v | {"out": Path(v["out"]).name} for v in info["variants"][:n]]:
                want = [v["out"] for v in mine]
                print(f"library: the first {n} photos of {marker.parent}", file=sys.stderr)
                return [marker.parent / f for f in want]
    return build(args.photos, args.library_root / f"library-{n}-{size[0]}", n, args.seed, procs=2, size=size)


def bench(n: int, args: argparse.Namespace) -> dict:
    size = tuple(int(x) for x in args.size.lower().split("x"))
    files = library(n, size, args)
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-dag-full-{n}-", dir=args.work))
    sha = snapshot(args.commit, tmp / "code")
    photos = tmp / "photos"
    photos.mkdir()
    for f in files:  # copies, not hard links: a link made by another run changes the inode's ctime, and embed
        shutil.copy2(f, photos / f.name)  # then (rightly) takes the photo for changed since it was listed
    write_config(tmp, args.model_dir.resolve())
    env = dict(os.environ, PYTHONPATH=str(tmp / "code"))
    env["PATH"] = f"{REPO / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    base = ["-s", str(tmp / "code" / "Snakefile"), "--profile", args.profile]
    full = [*base, "all", "--configfile", "config.yaml"]
    dry = [*base, "-n", "all", "--configfile", "config.yaml"]
    out: dict = {"n": n, "size": list(size), "commit": sha, "dir": str(tmp), "runs": {}}

    def step(name: str, argv: list[str]) -> dict:
        r = run_command(argv, tmp, env, tmp / f"{name.replace(' ', '_')}.log", args.poll)
        out["runs"][name] = r
        save(args.work, out)  # after every step: a run cut short still shows what it measured
        print(
            f"[n={n}] {name}: {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU, {len(r['jobs'])} jobs, "
            f"other load {r['other_cpus']:.2f} CPUs, nothing to do: {r['nothing_to_do']}",
            flush=True,
        )
        return r

    step("full run", full)
    out["faces"] = _faces(tmp)
    out["disk_mb"] = {"photos": du_mb(photos), "work": du_mb(tmp / "work"), "out": du_mb(tmp / "out")}
    save(args.work, out)
    step("dry run after", dry)
    step("no-op rerun", full)
    for v in plan(args.photos, photos, 10, seed=args.seed + 1000):
        make_variant(dataclasses.replace(v, out=str(photos / f"new-{v.index:04d}.jpg")), size=size)
    step("+10 photos: dry run", dry)
    step("+10 photos", full)
    out["faces_after"] = _faces(tmp)
    save(args.work, out)
    step("+10 photos: dry run after", dry)
    if not args.keep:
        shutil.rmtree(tmp)
    return out


def save(work: Path, res: dict) -> None:
    path = work / f"bench_dag_full-{res['n']}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=1))
    os.replace(tmp, path)


def _faces(tmp: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(tmp / "work" / "sources" / SOURCE / "faces.parquet").metadata.num_rows


# ------------------------------------------------------------------ rendering


def per_rule(run: dict) -> dict[str, dict]:
    """Jobs of one run summed per rule (embed shards: wall = the longest shard, they run together)."""
    rules: dict[str, dict] = {}
    for j in run["jobs"]:
        r = rules.setdefault(j["rule"], {"wall_s": 0.0, "cpu_s": 0.0, "peak_rss_mb": 0.0, "jobs": 0, "busy": 0.0})
        r["wall_s"] = max(r["wall_s"], j["wall_s"]) if j["rule"] == "embed_shard" else r["wall_s"] + j["wall_s"]
        r["cpu_s"] += j["cpu_s"]
        r["peak_rss_mb"] = max(r["peak_rss_mb"], j["peak_rss_mb"])
        r["busy"] = max(r["busy"], j["machine_busy_cpus"])
        r["jobs"] += 1
    return rules


def busy_wall(run: dict) -> float:
    """Seconds of the command during which at least one job ran (the union of the jobs' intervals)."""
    total, reach = 0.0, 0.0
    for j in sorted(run["jobs"], key=lambda r: r["start_s"]):
        a, b = j["start_s"], j["start_s"] + j["wall_s"]
        total += max(0.0, b - max(a, reach))
        reach = max(reach, b)
    return total


def exponent(t1: float, t2: float, n1: int, n2: int) -> float | None:
    return math.log(t2 / t1) / math.log(n2 / n1) if t1 > 0 and t2 > 0 else None


def _fmt(x: float | None, nd: int = 2) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def render(sizes: list[dict], machine: dict, date: str, command: str) -> str:
    sizes = sorted(sizes, key=lambda s: s["n"])
    lines = [
        SECTION,
        "",
        f"- Date: {date}; machine: {machine['cpu']}, {machine['cores']}, {machine['ram']} RAM; other processes "
        f'used {_other_load(sizes)} CPUs on average during the full runs (the "machine busy" column: CPUs in use '
        "on the whole 2-CPU machine while the job ran, ours included; where others were busy, wall times are "
        "inflated, CPU times less so).",
        f"- Command: `{command}`; each size: `snakemake -s <snapshot>/Snakefile --profile wsl all --configfile "
        "config.yaml` in a fresh directory (relative roots, one folder source, `refine.min_faces: 3`), code = "
        "`git archive` of commit " + ", ".join(sorted({f"`{s['commit']}`" for s in sizes})) + ".",
        "- Library: `benchmarks/build_library.py` variants of the 192 demo photos (jittered crops, EXIF "
        f"rotations, recompressions; ~n/192 near-duplicates of each), **{sizes[0]['size'][0]}×{sizes[0]['size'][1]}"
        "**, not 12 MP: a 10k library of 12 MP files takes ~90 min to build here and ~11 GB (the demo photos are "
        "at most 1280×1080, so 12 MP adds pixels, not content). Stages whose cost is per pixel (embed's decode, "
        "dedup's hashing) are cheaper per photo than with 12 MP; the per-face stages are not.",
        "- Per job: wall, CPU (its process tree) and peak RSS (kernel VmHWM) sampled from /proc every 0.1 s "
        "(`facesets <subcommand>` processes under the run's snakemake; embed_shard's wall: the longest shard); "
        '"snakemake alone" = the wall during which no job ran (DAG, rerun checks, state files, job start-up).',
        "",
    ]
    for s in sizes:
        lines += _size_section(s)
    done = [s for s in sizes if "faces" in s]
    for a, b in itertools.pairwise(done):  # every pair of consecutive sizes
        lines += _exponents([a, b])
    return "\n".join(lines).rstrip("\n") + "\n"


def _size_section(s: dict) -> list[str]:
    runs = s["runs"]
    if "full run" not in runs or "faces" not in s:
        return [f"### {s['n']} photos", "", "The full run did not finish before the deadline: nothing measured.", ""]
    full = runs["full run"]
    rules = per_rule(full)
    lines = [
        f"### {s['n']} photos ({s['faces']} faces)",
        "",
        f"Full run: **{full['wall_s']:.0f} s** wall, {full['cpu_s']:.0f} s CPU, other processes "
        f"{full['other_cpus']:.2f} CPUs on average. Disk: photos {s['disk_mb']['photos']:.0f} MiB, work "
        f"{s['disk_mb']['work']:.0f} MiB, output {s['disk_mb']['out']:.0f} MiB.",
        "",
        "| rule | jobs | wall s | CPU s | CPU/wall | peak RSS MiB | machine busy (CPUs) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in STAGES:
        if name in rules:
            r = rules[name]
            lines.append(
                f"| {name} | {r['jobs']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['cpu_s'] / max(r['wall_s'], 1e-9):.2f} "
                f"| {r['peak_rss_mb']:.0f} | {r['busy']:.2f} |"
            )
    lines += [
        f"| snakemake alone (no job running) | | {full['wall_s'] - busy_wall(full):.1f} | | | | |",
        "",
    ]
    if "no-op rerun" in runs:
        noop, dry = runs["no-op rerun"], runs["dry run after"]
        lines.append(
            f"- **No-op rerun: {noop['wall_s']:.1f} s** wall ({noop['cpu_s']:.1f} s CPU, {len(noop['jobs'])} jobs; "
            f"other load {noop['other_cpus']:.2f} CPUs); `-n` before it: "
            + ("nothing to be done" if dry["nothing_to_do"] else f"**{len(dry['planned'])} jobs planned**")
            + f" ({dry['wall_s']:.1f} s)."
        )
    if "+10 photos" in runs:
        lines += _increment(s, full)
    else:
        lines.append("- +10 photos: not measured (the run was cut short at the deadline).")
    return [*lines, ""]


def _increment(s: dict, full: dict) -> list[str]:
    runs = s["runs"]
    inc, incd = runs["+10 photos"], runs["+10 photos: dry run"]
    after = runs.get("+10 photos: dry run after")
    if after is None:
        tail = "`-n` after it: not run."
    elif after["nothing_to_do"]:
        tail = "`-n` after it: nothing to be done."
    else:
        tail = f"`-n` after it: **{len(after['planned'])} jobs still planned**."
    new_faces = s.get("faces_after", s["faces"]) - s["faces"]
    lines = [
        f"- **+10 photos: {inc['wall_s']:.0f} s = {100 * inc['wall_s'] / full['wall_s']:.0f} % of the full "
        f"run** (CPU {inc['cpu_s']:.0f} s = {100 * inc['cpu_s'] / max(full['cpu_s'], 1e-9):.0f} %; "
        f"{new_faces} new faces; other load {inc['other_cpus']:.2f} CPUs); {tail} What reran, why (`-n`'s "
        "reason) and how long:",
        "",
        "| rule | wall s | CPU s | peak RSS MiB | CPU: share of the full run's rule | reason |",
        "|---|---:|---:|---:|---:|---|",
    ]
    inc_rules, full_rules = per_rule(inc), per_rule(full)
    reasons: dict[str, str] = {}
    for p in incd["planned"]:
        reasons.setdefault(p["rule"], p["reason"])
    for name in STAGES:
        if name in inc_rules or name in reasons:
            r = inc_rules.get(name, {"wall_s": 0.0, "cpu_s": 0.0, "peak_rss_mb": 0.0})
            base = full_rules.get(name, {}).get("cpu_s", 0.0)
            share = f"{100 * r['cpu_s'] / base:.0f} %" if base > 0 else "–"
            why = reasons.get(name, "(not in the dry run)").replace("|", "\\|")
            lines.append(
                f"| {name} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['peak_rss_mb']:.0f} | {share} | {why} |"
            )
    return lines


def extrapolate(t: float, k: float | None, n: int, to: int) -> float | None:
    return t * (to / n) ** k if k is not None and n < to else None


def _verdict(k: float | None, cpu: float, nlogn: float) -> str:
    if k is None:
        return "–"
    if cpu < STARTUP_BOUND_S:
        return "start-up bound"
    return "yes" if k <= nlogn + 0.02 else "**no**"


def _other_load(sizes: list[dict]) -> str:
    loads = [f"{s['runs']['full run']['other_cpus']:.2f} at {s['n']}" for s in sizes if "full run" in s["runs"]]
    return ", ".join(loads) or "unknown"


def _targets(n: int) -> list[int]:
    """The library sizes beyond the largest measured one that the exponents extrapolate to."""
    return [t for t in (10_000, 100_000) if t > n]


def _exponents(sizes: list[dict]) -> list[str]:
    a, b = sizes[-2], sizes[-1]
    ra, rb = per_rule(a["runs"]["full run"]), per_rule(b["runs"]["full run"])
    n1, n2 = a["n"], b["n"]
    targets = _targets(n2)
    nlogn = 1 + math.log(math.log(n2) / math.log(n1)) / math.log(n2 / n1)
    lines = [
        f"### scaling {n1} → {n2} photos",
        "",
        f"Exponent k of t ∝ n^k per stage, log(t₂/t₁)/log(n₂/n₁); n log n is k = {nlogn:.3f} over this range. "
        f"Faces grew {b['faces'] / a['faces']:.2f}× for {n2 / n1:.0f}× photos. A job of under "
        f"{STARTUP_BOUND_S:.0f} s CPU is mostly interpreter start-up and imports (~1 s a job), so its exponent "
        'understates its growth ("start-up bound"). The "est." columns extrapolate the CPU time with the '
        "CPU exponent: estimates, not runs.",
        "",
        f"| rule | CPU s @{n1} | CPU s @{n2} | k (CPU) | k (wall) | peak RSS MiB @{n1} → @{n2} | "
        + "".join(f"est. CPU s @{t // 1000}k | " for t in targets)
        + "≤ n log n? |",
        "|---|---:|---:|---:|---:|---:|" + "---:|" * len(targets) + "---|",
    ]
    totals = dict.fromkeys(targets, 0.0)
    for name in STAGES:
        if name not in ra or name not in rb:
            continue
        x, y = ra[name], rb[name]
        kc = exponent(x["cpu_s"], y["cpu_s"], n1, n2)
        kw = exponent(x["wall_s"], y["wall_s"], n1, n2)
        est = {t: extrapolate(y["cpu_s"], kc, n2, t) for t in targets}
        for t in targets:
            totals[t] += est[t] or 0.0
        lines.append(
            f"| {name} | {x['cpu_s']:.1f} | {y['cpu_s']:.1f} | {_fmt(kc)} | {_fmt(kw)} | "
            f"{x['peak_rss_mb']:.0f} → {y['peak_rss_mb']:.0f} | "
            + "".join(f"{_fmt(est[t], 0)} | " for t in targets)
            + f"{_verdict(kc, y['cpu_s'], nlogn)} |"
        )
    fa, fb = a["runs"]["full run"], b["runs"]["full run"]
    lines += [
        f"| whole command | {fa['cpu_s']:.1f} | {fb['cpu_s']:.1f} | {_fmt(exponent(fa['cpu_s'], fb['cpu_s'], n1, n2))} | "
        f"{_fmt(exponent(fa['wall_s'], fb['wall_s'], n1, n2))} | | "
        + "".join(f"{totals[t]:.0f} (stages) | " for t in targets)
        + "|",
        "",
    ]
    if "+10 photos" in a["runs"] and "+10 photos" in b["runs"]:
        full10 = totals[10_000] if 10_000 in totals else b["runs"]["full run"]["cpu_s"]
        lines += _increment_scaling(a, b, full10)
    return lines


def _increment_scaling(a: dict, b: dict, full10: float) -> list[str]:
    """The +10 photos increment per rule at both sizes, and what it is (measured at 10k, else
    extrapolated there) as a share of the full 10k run's CPU ``full10`` (measured or extrapolated)."""
    n1, n2 = a["n"], b["n"]
    at10 = n2 >= 10_000
    ia, ib = per_rule(a["runs"]["+10 photos"]), per_rule(b["runs"]["+10 photos"])
    na, nb = a["runs"]["no-op rerun"], b["runs"]["no-op rerun"]
    lines = [
        f"The increment (+10 photos) and the no-op rerun, {n1} → {n2} photos (CPU s"
        + ("):" if at10 else "; 10k extrapolated):"),
        "",
        f"| rule | +10 @{n1} | +10 @{n2} | k |" + ("" if at10 else " est. +10 @10k |"),
        "|---|---:|---:|---:|" + ("" if at10 else "---:|"),
    ]
    tot = 0.0
    for name in STAGES:
        if name not in ia and name not in ib:
            continue
        x, y = ia.get(name, {}).get("cpu_s", 0.0), ib.get(name, {}).get("cpu_s", 0.0)
        k = exponent(x, y, n1, n2)
        e = None if at10 else extrapolate(y, k, n2, 10_000)
        tot += e if e is not None else y
        lines.append(f"| {name} | {x:.1f} | {y:.1f} | {_fmt(k)} |" + ("" if at10 else f" {_fmt(e, 1)} |"))
    kn = exponent(na["cpu_s"], nb["cpu_s"], n1, n2)
    if at10:
        tot = b["runs"]["+10 photos"]["cpu_s"]
    share = f"{tot:.0f} = **{100 * tot / max(full10, 1e-9):.1f} % of the full run's {full10:.0f}**"
    total = f"| **+10 photos, all jobs** | {a['runs']['+10 photos']['cpu_s']:.1f} | {b['runs']['+10 photos']['cpu_s']:.1f} | |"
    noop = f"| no-op rerun (snakemake alone) | {na['cpu_s']:.1f} | {nb['cpu_s']:.1f} | {_fmt(kn)} |"
    if at10:
        lines += [total, noop, "", f"+10 photos at {n2} photos, measured: {share} CPU s.", ""]
    else:
        noop10 = extrapolate(nb["cpu_s"], kn, n2, 10_000)
        lines += [f"{total} {share} |", f"{noop} {_fmt(noop10, 1)} |", ""]
    return lines


NOTES = "### notes"  # a hand-written last subsection of the section, kept when the numbers are re-rendered


def kept_notes(out: Path) -> str:
    """The section's hand-written NOTES subsection as it stands in ``out`` (or "")."""
    lines = out.read_text(encoding="utf-8").splitlines(keepends=True) if out.exists() else []
    start = next((i for i, ln in enumerate(lines) if ln.rstrip() == SECTION), None)
    if start is None:
        return ""
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    notes = next((i for i in range(start, end) if lines[i].startswith(NOTES)), None)
    return "\n" + "".join(lines[notes:end]).rstrip("\n") + "\n" if notes is not None else ""


def load_sizes(work: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(work.glob("bench_dag_full-*.json"))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", default="1000", help="library sizes, comma separated")
    ap.add_argument("--size", default="1280x960", help="photo size, long x short edge (12 MP: 4000x3000)")
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--commit", default="HEAD", help="the code measured (a snapshot of this commit)")
    ap.add_argument("--profile", default="wsl")
    ap.add_argument("--poll", type=float, default=0.1, help="seconds between /proc samples")
    ap.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    ap.add_argument("--library-root", type=Path, default=REPO / "work" / "bench")
    ap.add_argument("--work", type=Path, default=REPO / "work" / "bench")
    ap.add_argument("--model-dir", type=Path, default=REPO / "work" / "models")
    ap.add_argument("--keep", action="store_true", help="keep the run directories")
    ap.add_argument("--render", action="store_true", help="only re-render the section from saved sizes")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    args = ap.parse_args(argv)
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/bench_dag_full.py " + " ".join(sys.argv[1:] if argv is None else argv)
    meta_path = args.work / "bench_dag_full.meta.json"
    if not args.render:
        for n in (int(x) for x in args.n.split(",") if x.strip()):
            save(args.work, bench(n, args))
            meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"commands": []}
            meta.update(date=report.utc_date(), machine=report.machine_facts())
            meta["commands"] = list(dict.fromkeys([*meta["commands"], command]))
            meta_path.write_text(json.dumps(meta, indent=1))
    meta = json.loads(meta_path.read_text())
    text = render(load_sizes(args.work), meta["machine"], meta["date"], "`; `".join(meta["commands"]))
    text += kept_notes(args.out)
    report.write_section(args.out, SECTION, text, HEADER)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
