"""Windows paths for WSL paths (facesets/winpath.py), the embed host's command pieces, --path-map."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from facesets import schema
from facesets.analyzers.base import SerializedSession, needs_serial_runs
from facesets.config import load_schema, validate
from facesets.embedhost import EmbedHost, decode_arg
from facesets.winpath import WindowsPaths, path_locator, rebase, to_windows
from tests.conftest import VENV_BIN


@pytest.mark.parametrize(
    ("posix", "windows"),
    [
        ("/mnt/c/Users/Ann Lee/Pictures/a b.jpg", "C:\\Users\\Ann Lee\\Pictures\\a b.jpg"),
        ("/mnt/d/", "D:\\"),
        ("/mnt/e", "E:\\"),
        ("/home/ann/work/store", "\\\\wsl.localhost\\Debian\\home\\ann\\work\\store"),
        ("/home/ann/my photos/../x.jpg", "\\\\wsl.localhost\\Debian\\home\\ann\\x.jpg"),
        ("/mnt/cd/x", "\\\\wsl.localhost\\Debian\\mnt\\cd\\x"),  # not a drive letter
        ("/mnt/nas/photos", "\\\\wsl.localhost\\Debian\\mnt\\nas\\photos"),
        ("//tmp//x", "\\\\wsl.localhost\\Debian\\tmp\\x"),
        ("/", "\\\\wsl.localhost\\Debian"),
    ],
)
def test_to_windows(posix, windows):
    assert to_windows(posix, "Debian") == windows


def test_to_windows_old_share_name_and_errors():
    assert to_windows("/srv/p", "Ubuntu-22.04", "wsl$") == "\\\\wsl$\\Ubuntu-22.04\\srv\\p"
    assert to_windows("/mnt/c/x", None) == "C:\\x"  # drives need no distro
    with pytest.raises(ValueError, match="wsl_distro"):
        to_windows("/home/x", None)
    with pytest.raises(ValueError, match="absolute"):
        to_windows("work/store", "Debian")
    with pytest.raises(ValueError, match="unc_host"):
        to_windows("/home/x", "Debian", "wsl.example")


def test_windows_paths_makes_relative_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    win = WindowsPaths(distro="Debian")
    assert win("work/store") == to_windows(str(tmp_path / "work" / "store"), "Debian")
    monkeypatch.setenv("WSL_DISTRO_NAME", "FromEnv")
    assert WindowsPaths.detect().distro == "FromEnv"
    assert WindowsPaths.detect("Given").distro == "Given"


def test_wslpath_is_used_when_present_even_for_files_not_made_yet(tmp_path):
    """A stand-in `wslpath` that, like the real one, refuses paths that do not exist."""
    fake = tmp_path / "bin" / "wslpath"
    fake.parent.mkdir()
    fake.write_text(
        f"#!{sys.executable}\n"
        "import os, sys\n"
        "assert sys.argv[1] == '-w'\n"
        "p = sys.argv[2]\n"
        "if not os.path.exists(p):\n"
        "    sys.exit(f'wslpath: {p}: No such file or directory')\n"
        "print('\\\\\\\\wsl.localhost\\\\Real' + p.replace('/', '\\\\'))\n"
    )
    fake.chmod(0o755)
    (tmp_path / "work").mkdir()
    win = WindowsPaths(distro=None, wslpath=str(fake))
    out = win(str(tmp_path / "work" / "shards" / "2" / "0.faces.parquet"))
    assert out == "\\\\wsl.localhost\\Real" + str(tmp_path).replace("/", "\\") + "\\work\\shards\\2\\0.faces.parquet"
    assert win(str(tmp_path)) == "\\\\wsl.localhost\\Real" + str(tmp_path).replace("/", "\\")


def test_rebase():
    maps = [("/mnt/nas/photos", "\\\\wsl.localhost\\Debian\\mnt\\nas\\photos"), ("/data/x", "/elsewhere/x")]
    assert rebase("/mnt/nas/photos/2020/a b.jpg", maps) == "\\\\wsl.localhost\\Debian\\mnt\\nas\\photos\\2020\\a b.jpg"
    assert rebase("/data/x/y/z.jpg", maps) == "/elsewhere/x/y/z.jpg"
    assert rebase("/mnt/c/p/q.jpg", [("/mnt/c/p/", "C:\\p")]) == "C:\\p\\q.jpg"
    with pytest.raises(ValueError, match="none of the --path-map roots"):
        rebase("/mnt/nas/photos2/a.jpg", maps)  # a prefix of the name is not a folder


def test_path_locator_checks_before_anything_runs(tmp_path):
    (tmp_path / "here").mkdir()
    with pytest.raises(ValueError, match="not a folder this host can read"):
        path_locator([f"/lib={tmp_path / 'missing'}"], ["/lib/a.jpg"])
    with pytest.raises(ValueError, match="none of the --path-map roots"):
        path_locator([f"/lib={tmp_path / 'here'}"], ["/lib/a.jpg", "/other/b.jpg"])
    with pytest.raises(ValueError, match="expected /LINUX/ROOT=HOST_ROOT"):
        path_locator(["lib"], [])
    assert path_locator([f"/lib={tmp_path / 'here'}"], ["/lib/a.jpg"])("/lib/s/a.jpg") == str(tmp_path / "here/s/a.jpg")


def _settings(**over):
    return validate(over, load_schema("config"), "test")


def test_embed_host_local_and_windows(tmp_path):
    local = EmbedHost.from_settings(_settings(providers=["CUDAExecutionProvider", "CPUExecutionProvider"]))
    settings = '{"det_size": 640, "opencv": {"det_thresh": 0.6}}'
    a = local.job_args("work/l.parquet", "work/f.parquet", "work/store", "work/models", str(tmp_path), settings)
    assert (a.launcher, a.providers, a.listing, a.store, a.settings, a.path_map) == (
        "facesets",
        "CUDAExecutionProvider,CPUExecutionProvider",
        "work/l.parquet",
        "work/store",
        settings,
        (),
    )
    host = EmbedHost.from_settings(
        _settings(
            embed_host={"kind": "windows", "windows_python": "/mnt/c/My Venv/Scripts/python.exe", "wsl_distro": "D"}
        )
    )
    host = EmbedHost(host.kind, host.providers, host.python, WindowsPaths("D"))  # no wslpath even on a real WSL
    w = host.job_args("/w/l.parquet", "/w/f.parquet", "/w/store", "/mnt/c/models", "/mnt/nas/my photos", settings)
    assert w.launcher == "'/mnt/c/My Venv/Scripts/python.exe' -m facesets"
    assert w.providers == "DmlExecutionProvider,CPUExecutionProvider"
    assert (w.listing, w.faces, w.store, w.model_dir) == (
        "\\\\wsl.localhost\\D\\w\\l.parquet",
        "\\\\wsl.localhost\\D\\w\\f.parquet",
        "\\\\wsl.localhost\\D\\w\\store",
        "C:\\models",
    )
    assert w.path_map == ("--path-map", "/mnt/nas/my photos=\\\\wsl.localhost\\D\\mnt\\nas\\my photos")
    # WSL does not escape double quotes for Windows programs: the settings JSON travels as base64
    assert '"' not in w.settings and json.loads(decode_arg(w.settings)) == json.loads(settings)
    assert decode_arg(settings) == settings


def test_directml_sessions_run_one_call_at_a_time():
    assert needs_serial_runs(["DmlExecutionProvider", "CPUExecutionProvider"])
    assert not needs_serial_runs(["CUDAExecutionProvider", "CPUExecutionProvider"])

    class Session:  # records how many run() calls overlap
        def __init__(self):
            self.active = self.most = 0
            self.lock = threading.Lock()

        def run(self, names, feeds):
            with self.lock:
                self.active += 1
                self.most = max(self.most, self.active)
            time.sleep(0.01)
            with self.lock:
                self.active -= 1
            return [feeds]

        def get_inputs(self):
            return ["x"]

    inner = Session()
    wrapped = SerializedSession(inner)
    threads = [threading.Thread(target=wrapped.run, args=(None, {"i": i})) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert inner.most == 1 and wrapped.get_inputs() == ["x"] and wrapped.run(None, 5) == [5]


def test_embed_opens_photos_through_path_map_and_keeps_listing_paths(sample_photos, model_dir, tmp_path):
    """The listing names /old/...; the photos now live elsewhere: --path-map opens them there."""
    cli = [str(VENV_BIN / "facesets")]
    listing = tmp_path / "listing.parquet"
    subprocess.run([*cli, "stage", str(sample_photos), str(listing), "--name", "p"], check=True, capture_output=True)
    moved = tmp_path / "moved here"
    shutil.move(str(sample_photos), moved)
    base = [*cli, "embed", str(listing), "--model-dir", str(model_dir), "--workers", "2", "--plain-progress"]

    bad = subprocess.run(
        [
            *base,
            str(tmp_path / "bad.parquet"),
            "--store",
            str(tmp_path / "store"),
            "--path-map",
            f"{sample_photos}={tmp_path / 'nowhere'}",
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "not a folder this host can read" in bad.stderr
    assert not (tmp_path / "store").exists()  # nothing recorded

    out = tmp_path / "faces.parquet"
    proc = subprocess.run(
        [*base, str(out), "--store", str(tmp_path / "store"), "--path-map", f"{sample_photos}={moved}"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stats["images"] == 13 and stats["errors"] == 0 and stats["faces"] >= 13
    faces = schema.read_table(out)
    assert faces.path.str.startswith(str(sample_photos) + os.sep).all()  # the listing's paths, not the opened ones
