"""profiles/directml on Linux: a stand-in "Windows Python" receives the embed command.

The stand-in (a script this test writes, named python.exe, in a folder with a space) checks
what a real Windows interpreter started from WSL would need: `-m facesets embed`, every file
argument a Windows path (drive or \\\\wsl.localhost share), the DirectML provider list, no
double quote in any argument (WSL does not escape them). It then translates the paths back
with its own rules and runs the real embed here, on the CPU provider (DirectML is absent).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pandas as pd
import pytest

from facesets import schema
from tests.conftest import REPO, run_snakemake, write_workflow_config

pytestmark = pytest.mark.slow

DISTRO = "TestDistro"
DML = "DmlExecutionProvider,CPUExecutionProvider"

STAND_IN = r'''#!{python}
"""Stand-in for a Windows python.exe started from WSL (tests/workflow/test_directml.py)."""
import json
import os
import re
import sys

LOG = {log!r}
DML = {dml!r}


def fail(msg):
    sys.exit(f"stand-in python.exe: {{msg}}\nargv: {{sys.argv[1:]}}")


def to_linux(p):
    m = re.fullmatch(r"([A-Za-z]):\\(.*)", p)
    if m:
        return "/mnt/" + m.group(1).lower() + ("/" + m.group(2).replace("\\", "/") if m.group(2) else "")
    m = re.fullmatch(r"\\\\(?:wsl\.localhost|wsl\$)\\[^\\]+(\\.*)?", p)
    if m:
        return (m.group(1) or "\\").replace("\\", "/")
    fail(f"not a Windows path: {{p!r}}")


args = sys.argv[1:]
with open(LOG, "a") as fh:
    fh.write(json.dumps(args) + "\n")
if args[:3] != ["-m", "facesets", "embed"]:
    fail("expected -m facesets embed")
if any('"' in a for a in args):
    fail("a double quote would not survive WSL's command line to Windows")
out, i, positional = [], 3, 0
while i < len(args):
    a = args[i]
    if a in ("--store", "--model-dir"):
        out += [a, to_linux(args[i + 1])]
        i += 2
    elif a == "--path-map":
        linux_root, _, win_root = args[i + 1].partition("=")
        if not linux_root.startswith("/"):
            fail(f"--path-map key must be the listing's Linux root: {{args[i + 1]!r}}")
        out += [a, linux_root + "=" + to_linux(win_root)]
        i += 2
    elif a == "--providers":
        if args[i + 1] != DML:
            fail(f"providers {{args[i + 1]!r}}, expected {{DML!r}}")
        out += [a, "CPUExecutionProvider"]  # no DirectML on this Linux machine
        i += 2
    elif a.startswith("--"):
        out.append(a)
        if i + 1 < len(args) and not args[i + 1].startswith("--") and a != "--plain-progress":
            out.append(args[i + 1])
            i += 1
        i += 1
    else:
        out.append(to_linux(a))  # the listing and the face table
        positional += 1
        i += 1
if positional != 2 or "--path-map" not in out or "--providers" not in out:
    fail("expected LISTING CACHE, --path-map and --providers")
os.execv(sys.executable, [sys.executable, "-m", "facesets", "embed", *out])
'''


def _stand_in(tmp: Path) -> tuple[Path, Path]:
    exe = tmp / "Windows Python" / "Scripts" / "python.exe"
    exe.parent.mkdir(parents=True)
    log = tmp / "stand-in.calls.jsonl"
    exe.write_text(STAND_IN.format(python=sys.executable, log=str(log), dml=DML))
    exe.chmod(0o755)
    return exe, log


def _profile(name: str) -> str:
    return str(REPO / "profiles" / name)


def _faces_target(d: Path) -> str:
    return str(d / "work" / "sources" / "photos" / "faces.parquet")


def test_directml_profile_runs_the_windows_command_and_equals_a_local_run(sample_photos, model_dir, tmp_path):
    photos = tmp_path / "my photos"
    sample_photos.rename(photos)
    for p in sorted(photos.glob("*.jpg"))[6:]:  # keep it quick: 6 photos, the group photo among them
        if p.name != "group.jpg":
            p.unlink()
    exe, calls = _stand_in(tmp_path)
    host = f"embed_host:\n  windows_python: {exe}\n  wsl_distro: {DISTRO}\nembed:\n  shards: 2\n"
    local, dml = tmp_path / "local run", tmp_path / "dml run"
    cfgs = {}
    for d in (local, dml):
        d.mkdir()
        cfgs[d] = write_workflow_config(d, photos, model_dir, extra=host)

    # the dry run shows the Windows command
    dry = run_snakemake(
        ["--profile", _profile("directml"), "--configfile", str(cfgs[dml]), "-n", "-p", _faces_target(dml)], dml
    )
    cmds = [ln.removeprefix("Shell command: ") for ln in dry.stdout.splitlines() if "-m facesets embed" in ln]
    assert len(cmds) == 2, dry.stdout
    assert cmds[0].startswith(f"'{exe}' -m facesets embed '\\\\wsl.localhost\\{DISTRO}\\")
    assert f"--providers {DML}" in cmds[0] and "--path-map" in cmds[0] and "--embed-settings b64:" in cmds[0]
    assert "--path-map '" + str(photos) + f"=\\\\wsl.localhost\\{DISTRO}" + str(photos).replace("/", "\\") in cmds[0]

    run_snakemake(
        ["--profile", _profile("directml"), "--configfile", str(cfgs[dml]), "--cores", "2", _faces_target(dml)], dml
    )
    received = [json.loads(ln) for ln in calls.read_text().splitlines()]
    assert len(received) == 2 and all(r[:3] == ["-m", "facesets", "embed"] for r in received)
    run_snakemake(
        ["--profile", _profile("wsl"), "--configfile", str(cfgs[local]), "--cores", "2", _faces_target(local)], local
    )
    assert len(calls.read_text().splitlines()) == 2  # the local run did not use the stand-in

    for name in ("faces.parquet", "faces.images.parquet"):
        a = schema.read_table(local / "work" / "sources" / "photos" / name)
        b = schema.read_table(dml / "work" / "sources" / "photos" / name)
        pd.testing.assert_frame_equal(a, b)
    assert len(a) >= 7 and a.path.str.startswith(str(photos) + os.sep).all()

    # switching profiles reruns nothing, either way
    for d, profile in ((local, "directml"), (dml, "wsl")):
        proc = run_snakemake(["--profile", _profile(profile), "--configfile", str(cfgs[d]), "-n", _faces_target(d)], d)
        assert "Nothing to be done" in proc.stdout, proc.stdout


def test_a_missing_windows_python_fails_the_job_clearly(sample_photos, model_dir, tmp_path):
    cfg = write_workflow_config(
        tmp_path,
        sample_photos,
        model_dir,
        extra=f"embed_host:\n  windows_python: {tmp_path}/none/python.exe\n  wsl_distro: {DISTRO}\n",
    )
    proc = run_snakemake(
        ["--profile", _profile("directml"), "--configfile", str(cfg), "--cores", "1", _faces_target(tmp_path)],
        tmp_path,
        check=False,
    )
    assert proc.returncode != 0
    log = (tmp_path / "work" / "logs" / "embed" / "photos.1.0.log").read_text()
    assert "python.exe" in log and ("No such file" in log or "not found" in log)
