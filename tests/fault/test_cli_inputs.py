"""Issue #11's CLI items: a missing or wrong input file is one clear line naming it (exit 2), the
export-swap candidates default, extend's help and options, a photo that vanished since embed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from facesets.cli import build_parser
from tests.unit.test_extend import _table, _write


def _facesets(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "facesets", *map(str, args)], capture_output=True, text=True, cwd=cwd
    )


def _one_line_error(proc: subprocess.CompletedProcess, name: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and name in errors[0], proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("cluster", "{missing}", "{tmp}/raw"),
        ("identities", "{missing}", "{tmp}/ids"),
        ("summary", "{missing}"),
        ("refine", "{missing}", "{tmp}/ref"),
    ],
)
def test_a_missing_face_table_is_one_line_naming_it(tmp_path, args):
    missing = tmp_path / "nope" / "faces.parquet"
    proc = _facesets(*(a.format(missing=missing, tmp=tmp_path) for a in args))
    _one_line_error(proc, str(missing))
    assert "not found" in proc.stderr


def _clustered(tmp_path):
    faces = tmp_path / "faces.parquet"
    _write(_table(tmp_path, {"a": [0] * 5, "b": [1] * 4}), faces)
    raw = tmp_path / "raw"
    assert _facesets("cluster", faces, raw).returncode == 0
    return faces, raw


def test_export_swap_refuses_a_raw_manifest_as_refine_manifest(tmp_path):
    faces, raw = _clustered(tmp_path)
    proc = _facesets("export-swap", faces, raw / "manifest.json", tmp_path / "export")
    _one_line_error(proc, str(raw / "manifest.json"))
    assert "raw-cluster manifest" in proc.stderr and "--raw-manifest" in proc.stderr
    assert not (tmp_path / "export").exists()


def test_export_swap_without_raw_manifest_does_not_ask_for_candidates(tmp_path, model_dir):
    faces, _ = _clustered(tmp_path)
    ref = tmp_path / "ref"
    assert _facesets("refine", faces, ref, "--min-faces", "100").returncode == 0  # no sets: nothing to crop
    proc = _facesets("export-swap", faces, ref / "refine_manifest.json", tmp_path / "export", "--model-dir", model_dir)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["candidates"] == 0
    asked = _facesets("export-swap", faces, ref / "refine_manifest.json", tmp_path / "export2", "--candidates")
    _one_line_error(asked, "--raw-manifest")


def test_export_swap_help_says_the_candidates_default():
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["export-swap"].format_help().split())
    assert "needs --raw-manifest" in help_text and "default:" in help_text


def test_extend_help_says_old_faces_are_required_and_refine_out_takes_settings():
    extend = build_parser()._subparsers._group_actions[0].choices["extend"]
    text = " ".join(extend.format_help().split())
    assert "may be included" not in text and "required" in text
    opts = {s for a in extend._actions for s in a.option_strings}
    assert {"--min-faces", "--configfile", "--refine-settings"} <= opts


def test_extend_refine_out_honours_min_faces(tmp_path):
    faces, raw = _clustered(tmp_path)
    out = tmp_path / "ref"
    many = json.loads(_facesets("extend", faces, raw, "--refine-out", out, "--min-faces", "2").stdout.splitlines()[-1])
    few = json.loads(
        _facesets("extend", faces, raw, "--refine-out", out, "--min-faces", "5").stdout.splitlines()[-1]
    )
    assert many["facesets"] == 2 and few["facesets"] == 1  # person b has 4 photos


@pytest.mark.parametrize("link_mode", ["hardlink", "symlink", "copy"])
def test_cluster_reports_and_skips_a_photo_that_vanished_since_embed(tmp_path, link_mode):
    df = _table(tmp_path, {"a": [0] * 4, "b": [1] * 3})
    faces = tmp_path / "faces.parquet"
    _write(df, faces)
    gone = df["path"].iloc[1]
    os.remove(gone)
    raw = tmp_path / "raw"
    proc = _facesets("cluster", faces, raw, "--link-mode", link_mode)
    assert proc.returncode == 0, proc.stderr
    assert gone in proc.stderr and "vanished" in proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["vanished"] == 1
    manifest = json.loads((raw / "manifest.json").read_text())
    assert manifest["vanished"] == [gone]
    linked = [p for p in raw.rglob("*") if p.is_symlink() or p.is_file()]
    assert all(p.exists() for p in linked)  # no dangling link
    assert len([p for p in linked if p.name != "manifest.json"]) == len(df) - 1
    assert pd.read_parquet(faces)["path"].isin([gone]).any()  # the face table is not changed
