"""scripts/install_profiles.py: `snakemake --profile NAME` works from every checkout's root,
without two checkouts fighting over one global link (issue #11)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import REPO, VENV_BIN

SCRIPT = REPO / "scripts" / "install_profiles.py"


def _install(cfg_home: Path, repo_script: Path = SCRIPT) -> subprocess.CompletedProcess:
    env = dict(os.environ, XDG_CONFIG_HOME=str(cfg_home), HOME=str(cfg_home.parent))
    return subprocess.run([str(VENV_BIN / "python"), str(repo_script)], env=env, capture_output=True, text=True)


def test_every_profile_is_installed_as_a_copy_not_a_link(tmp_path):
    proc = _install(tmp_path / "cfg")
    assert proc.returncode == 0, proc.stderr
    for name in ("wsl", "directml", "slurm"):
        d = tmp_path / "cfg" / "snakemake" / name
        assert d.is_dir() and not d.is_symlink()
        assert (d / "config.v8+.yaml").read_bytes() == (REPO / "profiles" / name / "config.v8+.yaml").read_bytes()
    assert _install(tmp_path / "cfg").stderr == ""  # a second run changes nothing


def test_a_dangling_link_from_a_deleted_checkout_is_replaced(tmp_path):
    user = tmp_path / "cfg" / "snakemake"
    user.mkdir(parents=True)
    (user / "wsl").symlink_to(tmp_path / "deleted-checkout" / "profiles" / "wsl", target_is_directory=True)
    assert _install(tmp_path / "cfg").returncode == 0
    assert (user / "wsl").is_dir() and not (user / "wsl").is_symlink()
    assert (user / "wsl" / "config.v8+.yaml").is_file()


def test_a_users_own_profile_folder_is_left_alone(tmp_path):
    mine = tmp_path / "cfg" / "snakemake" / "wsl"
    mine.mkdir(parents=True)
    (mine / "config.v8+.yaml").write_text("cores: 3\n")
    proc = _install(tmp_path / "cfg")
    assert proc.returncode == 0
    assert (mine / "config.v8+.yaml").read_text() == "cores: 3\n"
    assert "not ours" in proc.stderr


def test_profiles_name_no_checkout(tmp_path):
    """The premise of copying: a profile's files hold no path of the checkout they came from."""
    for f in (REPO / "profiles").glob("*/*"):
        assert str(REPO) not in f.read_text(), f
