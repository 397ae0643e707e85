"""profiles/slurm without a cluster: the dry run puts embed shards on the GPU partition."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO, run_snakemake, write_workflow_config

pytestmark = pytest.mark.slow


def test_slurm_profile_dry_run_assigns_partitions(sample_photos, model_dir, tmp_path):
    cfg = write_workflow_config(tmp_path, sample_photos, model_dir, extra="embed:\n  shards: 2\n")
    target = str(tmp_path / "work" / "sources" / "photos" / "faces.parquet")
    proc = run_snakemake(
        [target, "--profile", str(REPO / "profiles" / "slurm"), "--configfile", str(cfg), "-n", "-p"], tmp_path
    )
    jobs = re.findall(r"^rule (\w+):\n(?:.*\n)*?\s+resources: (.*)\nShell command: (.*)$", proc.stdout, re.MULTILINE)
    by_rule = {}
    for rule, resources, cmd in jobs:
        by_rule.setdefault(rule, []).append((resources, cmd))
    assert sorted(by_rule) == ["embed", "embed_shard", "stage"] and len(by_rule["embed_shard"]) == 2
    for resources, cmd in by_rule["embed_shard"]:
        assert "slurm_partition=gpu" in resources and "gres=gpu:1" in resources
        assert "--providers CUDAExecutionProvider,CPUExecutionProvider" in cmd and "--workers 8" in cmd
    for rule in ("stage", "embed"):
        assert "slurm_partition=cpu" in by_rule[rule][0][0] and "gres" not in by_rule[rule][0][0]
