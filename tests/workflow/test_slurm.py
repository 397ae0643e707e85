"""profiles/slurm against a real single-node Slurm (Debian's slurm-wlm) started for the test.

scripts/slurm/local_cluster.py starts munged, MariaDB + slurmdbd (so sacct answers),
slurmctld and slurmd in a temp folder; the workflow runs with profiles/slurm adjusted for
that node (no GPU there, small memory and thread requests, quick status checks) through
snakemake-executor-plugin-slurm; sacct must list every job with its rule and partition
(embed shards on `gpu`, the rest on `cpu`); the face table and the raw clusters must equal
a local run's. Skips with the reason when Slurm is not installed (scripts/slurm/install.sh,
run by `make test` as root) or cannot start here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from facesets import schema
from tests.conftest import REPO, VENV_BIN, run_snakemake, write_workflow_config

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

CLUSTER = REPO / "scripts" / "slurm" / "local_cluster.py"
TOOLS = ("slurmctld", "slurmd", "slurmdbd", "sbatch", "sacct", "munged", "mariadbd")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    missing = [t for t in TOOLS if not (shutil.which(t) or os.access(f"/usr/sbin/{t}", os.X_OK))]
    if missing:
        pytest.skip(f"Slurm not installed ({', '.join(missing)} missing): run scripts/slurm/install.sh as root")
    if os.geteuid() != 0:
        pytest.skip("the local Slurm cluster needs root (slurmd runs jobs as their owner)")
    root = tmp_path_factory.mktemp("slurm")
    proc = subprocess.run(
        [sys.executable, str(CLUSTER), "start", str(root)], capture_output=True, text=True, timeout=180
    )
    if proc.returncode != 0:
        pytest.skip(f"the local Slurm cluster did not start: {proc.stderr.strip()[-1500:]}")
    facts = json.loads(proc.stdout)
    try:
        yield facts
    finally:
        subprocess.run([sys.executable, str(CLUSTER), "stop", str(root)], capture_output=True, timeout=120)


def _local_profile(slurm: dict, dest: Path) -> Path:
    """profiles/slurm as shipped, adjusted for the test node: the same partitions, no GPU."""
    prof = yaml.safe_load((REPO / "profiles" / "slurm" / "config.v8+.yaml").read_text())
    assert prof["executor"] == "slurm" and prof["set-resources"]["embed_shard"]["slurm_partition"] == "gpu"
    assert prof["default-resources"]["slurm_partition"] == "cpu"
    prof["set-resources"]["embed_shard"].pop("gres")  # the node has no GPU
    prof["set-resources"]["embed_shard"]["mem_mb"] = 1500
    prof["default-resources"]["mem_mb"] = 1500
    prof["cores"] = slurm["cpus"]
    prof["set-threads"] = {"embed_shard": 1}  # two shards side by side on the two CPUs
    prof["default-resources"]["slurm_account"] = "root"  # checked by the plugin through sacctmgr
    prof["slurm-init-seconds-before-status-checks"] = 2
    prof["seconds-between-status-checks"] = 2
    prof["latency-wait"] = 5
    dest.mkdir()
    (dest / "config.v8+.yaml").write_text(yaml.safe_dump(prof))
    return dest


def _sacct(env: dict, since: str) -> list[dict]:
    fields = ["JobID", "JobName", "State", "Partition", "Comment", "ExitCode"]
    proc = subprocess.run(
        ["sacct", "-X", "-n", "--parsable2", "-S", since, "-o", ",".join(fields)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return [dict(zip(fields, ln.split("|"), strict=True)) for ln in proc.stdout.splitlines() if ln.strip()]


def test_workflow_through_slurm_equals_a_local_run(slurm, sample_photos, model_dir, tmp_path):
    for p in sorted(sample_photos.glob("*.jpg"))[6:]:  # 6 photos plus the group photo
        if p.name != "group.jpg":
            p.unlink()
    env_slurm = dict(os.environ, **slurm["env"], PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}")
    env_slurm.setdefault("USER", "root")
    since = time.strftime("%Y-%m-%dT%H:%M:%S")
    runs = {}
    for name in ("slurm", "local"):
        d = tmp_path / name
        d.mkdir()
        cfg = write_workflow_config(d, sample_photos, model_dir, extra="embed:\n  shards: 2\n")
        targets = ["work/sources/photos/faces.parquet", "out/raw/photos"]  # relative, like the config's roots
        runs[name] = d
        if name == "local":
            run_snakemake(
                ["--profile", str(REPO / "profiles" / "wsl"), "--configfile", str(cfg), "--cores", "2", *targets], d
            )
            continue
        profile = _local_profile(slurm, tmp_path / "profile")
        cmd = [
            str(VENV_BIN / "snakemake"),
            *targets,
            "-s",
            str(REPO / "Snakefile"),
            "-d",
            str(d),
            "--profile",
            str(profile),
            "--configfile",
            str(cfg),
        ]
        proc = subprocess.run(cmd, cwd=d, env=env_slurm, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"

    jobs = _sacct(env_slurm, since)
    by_rule = {}
    for j in jobs:
        assert j["State"] == "COMPLETED" and j["ExitCode"] == "0:0", j
        rule = j["Comment"].removeprefix("rule_").split("_wildcards")[0]
        by_rule.setdefault(rule, []).append(j["Partition"])
    assert by_rule == {"stage": ["cpu"], "embed_shard": ["gpu", "gpu"], "embed": ["cpu"], "cluster": ["cpu"]}, jobs

    for name in ("faces.parquet", "faces.images.parquet"):
        a = schema.read_table(runs["local"] / "work" / "sources" / "photos" / name)
        b = schema.read_table(runs["slurm"] / "work" / "sources" / "photos" / name)
        pd.testing.assert_frame_equal(a, b)
    ma = json.loads((runs["local"] / "out" / "raw" / "photos" / "manifest.json").read_text())
    mb = json.loads((runs["slurm"] / "out" / "raw" / "photos" / "manifest.json").read_text())
    assert ma["faces"] == mb["faces"] and len(ma["faces"]) >= 7
