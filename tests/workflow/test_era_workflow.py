"""The era_split rule (rules/era.smk): runs from the ledger, reruns only when the identity changes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from facesets import ledger as L
from tests.conftest import run_snakemake
from tests.unit.test_era import MODEL, member_keys, two_era_library, write_inputs

pytestmark = pytest.mark.slow  # runs snakemake three times


def test_era_split_rule_runs_from_the_ledger_and_reruns_on_a_changed_identity(tmp_path: Path) -> None:
    lib, g = two_era_library()
    tables, q, _ = write_inputs(tmp_path, lib)
    src = tmp_path / "work" / "sources" / "lib"
    src.mkdir(parents=True)
    shutil.copy(tables[0], src / "faces.parquet")  # as embed and enrich leave them
    shutil.copy(q, src / "quality.parquet")
    swap = tmp_path / "out" / "facesets_swap_ready"
    swap.mkdir(parents=True)
    kid = L.Identity(number=4, name="kid", kind="discovered")
    kid.centroid_sum[MODEL] = lib.seed_centroid().tolist()
    kid.centroid_count[MODEL] = 1
    ledger = swap / "ledger.json"
    ledger.write_text(json.dumps(L.to_json(L.Ledger(identities=[kid]))))
    (tmp_path / "photos").mkdir()
    (tmp_path / "lib.yaml").write_text(f"name: lib\nkind: folder\npath: {tmp_path / 'photos'}\n")
    (tmp_path / "config.yaml").write_text(
        f"work_root: {tmp_path / 'work'}\noutput_root: {tmp_path / 'out'}\n"
        f"sources: [{tmp_path / 'lib.yaml'}]\neras: {{identities: [kid], min_era_faces: 20, export: false}}\n"
    )
    target = str(tmp_path / "out" / "eras" / "kid")
    args = ["--configfile", str(tmp_path / "config.yaml"), "-c1", target]
    run_snakemake([*args, "-n"], tmp_path)  # writes the stage/embed state files (rules/common.smk)
    for f in (src / "faces.parquet", src / "quality.parquet"):  # the tables are newer, as after a run
        f.touch()
    run_snakemake(args, tmp_path)
    m = json.loads((Path(target) / "eras_manifest.json").read_text())
    assert [e["name"] for e in m["eras"]] == ["kid_era1", "kid_era2"]
    assert [member_keys(e) for e in m["eras"]] == [set(g["a"]), set(g["b"])]
    assert m["seed"]["manifest"] == str(ledger)
    assert "Nothing to be done" in run_snakemake([*args, "-n"], tmp_path).stdout
    obj = json.loads(ledger.read_text())
    obj["identities"][0]["centroid_count"][MODEL] = 2  # manifest-merge changed the identity
    ledger.write_text(json.dumps(obj))
    out = run_snakemake([*args, "-n"], tmp_path).stdout
    assert "era_split" in out and "Params have changed" in out
