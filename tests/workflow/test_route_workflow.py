"""rules/library.smk: route passes the source's `cluster` section (issue #16: it passed none)."""

from __future__ import annotations

import json
import re

from tests.conftest import run_snakemake, write_workflow_config


def test_route_rule_passes_the_cluster_section(tmp_path, model_dir):
    (tmp_path / "photos").mkdir()
    (tmp_path / "mixed").mkdir()
    (tmp_path / "sources").mkdir()
    (tmp_path / "sources" / "bucket.yaml").write_text(f"name: bucket\nkind: mixed\npath: {tmp_path / 'mixed'}\n")
    extra = f"  - {tmp_path / 'sources' / 'bucket.yaml'}\ncluster:\n  exact_max: 1234\n  knn: 7\n"
    write_workflow_config(tmp_path, tmp_path / "photos", model_dir, extra=extra)
    out = run_snakemake(["--configfile", "config.yaml", "-n", "-p", "out/refine/bucket"], tmp_path).stdout
    route = next(line for line in out.splitlines() if "facesets route " in line)
    found = re.search(r"--cluster-settings '([^']*)'", route)
    assert found, route
    settings = json.loads(found.group(1))
    assert settings["exact_max"] == 1234 and settings["knn"] == 7
