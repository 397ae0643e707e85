"""scripts/windows/setup_embed_venv.ps1 installs what `facesets embed` imports (checked on Linux)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "windows" / "setup_embed_venv.ps1"
# Imported when present, not needed: pyarrow uses cloudpickle if installed (else pickle);
# setuptools' _distutils_hack comes from a .pth file every venv has.
OPTIONAL = {"cloudpickle", "setuptools"}

PROBE = r"""
import json, sys, sysconfig
from importlib import metadata
from facesets import cli
rc = cli.main(sys.argv[1:])
site = sysconfig.get_paths()["purelib"]
tops = {m.split(".")[0] for m, mod in list(sys.modules.items()) if (getattr(mod, "__file__", None) or "").startswith(site)}
dists = metadata.packages_distributions()
print(json.dumps({"rc": rc, "dists": sorted({d for t in tops for d in dists.get(t, [])})}))
"""


def _script_packages() -> list[str]:
    m = re.search(r"\$EmbedPackages = @\(([^)]*)\)", SCRIPT.read_text())
    assert m, "the $EmbedPackages list moved"
    return re.findall(r'"([^"]+)"', m.group(1))


def _closure(names: list[str]) -> set[str]:
    """The installed distributions these need, transitively (what pip installs with them)."""
    seen: set[str] = set()
    todo = [canonicalize_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for r in map(Requirement, reqs):
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(r.name))
    return seen


def test_every_embed_package_is_pinned():
    lock = {
        canonicalize_name(ln.split("==")[0])
        for ln in (REPO / "requirements.lock").read_text().splitlines()
        if "==" in ln and not ln.startswith("#")
    }
    missing = [p for p in _script_packages() if canonicalize_name(p) not in lock]
    assert not missing, missing


def test_the_windows_venv_covers_what_embed_imports(sample_photos, model_dir, tmp_path):
    listing = tmp_path / "listing.parquet"
    subprocess.run(
        [sys.executable, "-m", "facesets", "stage", str(sample_photos), str(listing)], check=True, capture_output=True
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            PROBE,
            "embed",
            str(listing),
            str(tmp_path / "f.parquet"),
            "--model-dir",
            str(model_dir),
            "--store",
            str(tmp_path / "store"),
            "--workers",
            "1",
            "--plain-progress",
            "--path-map",
            f"{sample_photos}={sample_photos}",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["rc"] == 0
    # onnxruntime-directml replaces onnxruntime on Windows (same module, same dependencies)
    covered = _closure([*_script_packages(), "onnxruntime"]) | {"facesets"} | OPTIONAL
    imported = {canonicalize_name(d) for d in out["dists"]}
    assert "onnxruntime" in imported and "opencv-python" in imported
    assert imported <= covered, f"imported by embed but not installed by {SCRIPT.name}: {sorted(imported - covered)}"
