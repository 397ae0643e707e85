"""The code base stays ruff-clean."""

import subprocess

from tests.conftest import REPO, VENV_BIN


def test_ruff_check_is_clean():
    proc = subprocess.run(
        [str(VENV_BIN / "ruff"), "check", "--no-cache", "facesets", "tests", "scripts", "benchmarks"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout
