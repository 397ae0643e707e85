"""Issue #18 at demo size: bytes on disk and the cost of adding two photos, for one or two code trees.

For each ``--code`` tree (this checkout by default; e.g. an unpacked ``git archive`` of an older
commit as the baseline, run in the same invocation so the ratios share one machine state):

1. the demo layout (``work/``, ``output/``, the demo source with its overrides) in a temp folder,
   the whole default target (``snakemake all``);
2. two new photos of the largest exported set's person (mirror images of two of its photos);
   the same command again, every ``facesets`` job timed (a shell function, through BASH_ENV);
3. ``du`` of ``work/`` and ``output/`` in one invocation (hard links counted once), the crop
   cache alone, and how many export/library bundles and sheets the second run wrote anew.

    .venv/bin/python benchmarks/bench_incremental.py --code /tmp/base --code . --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

# Snakemake puts its own Python's bin folder first on PATH, so the jobs' `facesets` is timed by a
# shell function that BASH_ENV defines in every job's (non-interactive) bash.
SHIM = """facesets() {{
  local start end rc=0
  start=$(date +%s.%N)
  "{real}" "$@" || rc=$?
  end=$(date +%s.%N)
  echo "$1 $start $end" >> "{times}"
  return $rc
}}
"""


def du(*paths: Path) -> int:
    """Bytes on disk of ``paths`` together (``du -s -B1``: a hard-linked file counts once)."""
    out = subprocess.run(["du", "-s", "-B1", "-c", *map(str, paths)], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1].split()[0])


def stamps(root: Path, pattern: str) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.glob(pattern)}


def outputs(tmp: Path) -> dict[str, dict[str, tuple[int, int]]]:
    o = tmp / "output"
    return {
        "export_bundles": stamps(o / "export", "*/*/*.fsz"),
        "library_bundles": stamps(o / "facesets_swap_ready", "*/*.fsz"),
        "export_sheets": stamps(o / "report", "*/contact_sheets/*.png"),
        "library_sheets": stamps(o / "report" / "library" / "contact_sheets", "*.png"),
    }


def snakemake(code: Path, tmp: Path, cfg: Path, env: dict) -> float:
    t = time.perf_counter()
    cmd = [str(VENV_BIN / "snakemake"), "-s", str(code / "Snakefile"), "-d", str(tmp), "--cores", "2"]
    proc = subprocess.run([*cmd, "all", "--configfile", str(cfg)], cwd=tmp, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"snakemake failed in {tmp}:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t


def add_two_photos(tmp: Path, photos: Path) -> list[str]:
    man = json.loads((tmp / "output" / "export" / "demo" / "manifest.json").read_text())
    biggest = max(man["facesets"], key=lambda e: (e["unique_images"], e["name"] == "faceset_001"))
    added = []
    for i, src in enumerate(sorted({c["source_path"] for c in biggest["crops"]})[:2]):
        dest = photos / "added" / f"mirror_{i}.jpg"
        dest.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(dest), cv2.flip(cv2.imread(src), 1), [cv2.IMWRITE_JPEG_QUALITY, 95])
        added.append(dest.name)
    return added


def one_tree(code: Path, model_dir: Path, keep: Path | None) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-incremental-", dir=keep))
    photos = tmp / "photos"
    shutil.copytree(REPO / "data" / "demo" / "photos", photos)
    demo = (REPO / "config" / "sources" / "demo.yaml").read_text().replace("data/demo/photos", str(photos))
    (tmp / "demo.yaml").write_text(demo)
    cfg = tmp / "config.yaml"
    cfg.write_text(f"work_root: work\noutput_root: output\nmodel_dir: {model_dir}\nsources:\n  - {tmp / 'demo.yaml'}\n")
    shim, times = tmp / "timing.sh", tmp / "times.txt"
    shim.write_text(SHIM.format(real=VENV_BIN / "facesets", times=times))
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", BASH_ENV=str(shim))
    env["PYTHONPATH"] = str(code)  # that tree's package, not the editable install's
    full = snakemake(code, tmp, cfg, env)
    before = outputs(tmp)
    times.unlink(missing_ok=True)
    added = add_two_photos(tmp, photos)
    second = snakemake(code, tmp, cfg, env)
    jobs: dict[str, float] = {}
    for line in times.read_text().splitlines():
        cmd, start, end = line.split()
        jobs[cmd] = round(jobs.get(cmd, 0.0) + float(end) - float(start), 2)
    after = outputs(tmp)
    rewritten = {
        k: {"kept": sum(after[k].get(p) == s for p, s in before[k].items()), "now": len(after[k])} for k in after
    }
    result = {
        "code": str(code),
        "full_run_s": round(full, 1),
        "plus_two_photos_s": round(second, 1),
        "plus_two_jobs_s": jobs,
        "added": added,
        "outputs_kept_untouched": rewritten,
        "du_bytes": {
            "work+output": du(tmp / "work", tmp / "output"),
            "output": du(tmp / "output"),
            "crop_cache": du(tmp / "work" / "cache" / "crops"),
            "photos": du(photos),
        },
    }
    if keep is None:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--code", action="append", type=Path, help="a code tree to measure (default: this checkout)")
    ap.add_argument("--model-dir", type=Path, default=REPO / "work" / "models")
    ap.add_argument("--keep", type=Path, help="leave the runs under this folder")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    results = [one_tree(c.resolve(), args.model_dir, args.keep) for c in (args.code or [REPO])]
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
