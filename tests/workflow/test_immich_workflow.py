"""Acceptance: Immich staging + embed + cluster through Snakemake against the local Immich,
an outage mid-run, and the same command resuming to exactly the uninterrupted result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from facesets import schema
from facesets.cli import main
from facesets.config import load_workflow_config
from facesets.immich.client import CircuitBreaker, ClientStats, ImmichClient, client_options
from facesets.immich.stage import stage_immich, stage_options
from tests.conftest import DEV_FACES, run_snakemake
from tests.support.fake_immich import (
    FakeImmich,
    assets_for_tests,
    default_users,
)

pytestmark = pytest.mark.slow
KEYS = ("IMMICH_KEY_ALICE", "IMMICH_KEY_BOB")


@pytest.fixture(scope="module")
def library(opencv_analyzer, demo_photos):
    return assets_for_tests(opencv_analyzer, demo_photos, DEV_FACES, every=10)


def write_config(tmp: Path, model_dir: Path, **immich) -> Path:
    block = {
        "url_env": "IMMICH_URL",
        "api_key_env": list(KEYS),
        "workers": 8,
        "timeout_s": 30,
        "retries": 3,
        "backoff_s": 0.05,
        **immich,
    }
    (tmp / "fam.yaml").write_text(
        "name: fam\nkind: immich\n"
        + f"immich: {json.dumps(block)}\n"
        + 'include: ["**/*.jpg", "**/*.jpeg", "**/*.png"]\n'
    )
    cfg = tmp / "config.yaml"
    cfg.write_text(
        f"work_root: {tmp / 'work'}\noutput_root: {tmp / 'out'}\nmodel_dir: {model_dir}\nsources:\n  - {tmp / 'fam.yaml'}\n"
    )
    return cfg


def staged(root: Path) -> dict[str, tuple[str, str]]:
    state = json.loads((root / "state.json").read_text())
    return {aid: (r["path"], r["sha256"]) for aid, r in state["assets"].items() if r["status"] == "staged"}


def reference_run(library, cfg: Path, tmp: Path) -> dict[str, tuple[str, str]]:
    """What an uninterrupted run stages: the same settings, in process, on a fresh server."""
    src = load_workflow_config({"sources": [str(tmp / "fam.yaml")], "work_root": str(tmp / "ref")}).source("fam")
    with FakeImmich(library, default_users()) as srv:
        opts = client_options(None, timeout_s=30, backoff_s=0.05)
        br, st = CircuitBreaker(12), ClientStats()
        clients = [
            ImmichClient(srv.url, srv.users[u].key, k, opts, br, st)
            for u, k in zip(("alice", "bob"), KEYS, strict=True)
        ]
        rep = stage_immich(clients, stage_options("fam", src.immich, src.include, src.exclude), tmp / "ref")
    assert rep.outcome == "complete"
    return staged(tmp / "ref")


def test_snakemake_outage_then_same_command_completes(library, model_dir, tmp_path, monkeypatch):
    cfg = write_config(tmp_path, model_dir)
    target = str(tmp_path / "out" / "raw" / "fam")
    args = ["--configfile", str(cfg), "--cores", "2", target]
    root = tmp_path / "work" / "immich" / "fam"
    users = default_users()
    with FakeImmich(library, users) as srv:
        monkeypatch.setenv("IMMICH_URL", srv.url)
        monkeypatch.setenv(KEYS[0], srv.users["alice"].key)
        monkeypatch.setenv(KEYS[1], srv.users["bob"].key)
        srv.schedule_outage(after_requests=70, duration_s=3600, mode="drop")
        first = run_snakemake(args, tmp_path, check=False)
        assert first.returncode != 0
        log = (tmp_path / "work" / "logs" / "stage" / "fam.log").read_text()
        assert "re-run the same command" in log and "ping failed too" in log
        assert "exit status 2" in first.stderr + first.stdout or "exit code 2" in first.stderr + first.stdout
        mid = staged(root)
        assert mid and not (tmp_path / "work" / "sources" / "fam" / "listing.parquet").exists()

        srv.end_outage()
        run_snakemake(args, tmp_path)  # the same command
        downloads = srv.downloads()
        assert srv.violations == []
        assert "Nothing to be done" in run_snakemake(["--configfile", str(cfg), "-n", target], tmp_path).stdout
        forced = run_snakemake(["--configfile", str(cfg), "-n", target, "--forcerun", "stage_immich"], tmp_path)
        assert "stage_immich" in forced.stdout
        secrets = [u.key for u in users]

    final = staged(root)
    assert set(mid) <= set(final) and final == reference_run(library, cfg, tmp_path)  # no loss, no duplicates
    bad = next(a for a in library if a.checksum_override)
    assert all(n == 1 for aid, n in downloads.items() if aid != bad.id)  # nothing fetched twice
    listing = schema.read_table(tmp_path / "work" / "sources" / "fam" / "listing.parquet")
    assert sorted(listing["relpath"]) == sorted(p for p, _ in final.values())
    faces = schema.read_table(tmp_path / "work" / "sources" / "fam" / "faces.parquet")
    assert len(faces) >= len(final) and set(faces["sha256"]) <= {s for _, s in final.values()}
    assert (Path(target) / "manifest.json").exists()
    # hostile paths: every file the run wrote is under the work or output folder
    for p in tmp_path.rglob("*"):
        if p.is_file():
            rel = p.relative_to(tmp_path).parts[0]
            assert rel in ("work", "out", "ref", "config.yaml", "fam.yaml", ".snakemake"), p
    assert not list(Path("/tmp").glob("facesets-escape-*"))
    for f in tmp_path.rglob("*"):  # state, report, logs, listing, Snakemake's metadata: no key anywhere
        if f.is_file():
            data = f.read_bytes()
            assert not any(s.encode() in data for s in secrets), f


def test_cli_exit_codes_and_messages(library, tmp_path, monkeypatch, capsys):
    block = {"url_env": "IMMICH_URL", "api_key_env": "IMMICH_API_KEY", "backoff_s": 0.001, "retries": 15}
    base = [
        "stage-immich",
        str(tmp_path / "listing.parquet"),
        "--name",
        "fam",
        "--work-root",
        str(tmp_path / "w"),
        "--immich-settings",
        json.dumps(block),
    ]
    monkeypatch.delenv("IMMICH_URL", raising=False)
    assert main(base) == 2 and "IMMICH_URL" in capsys.readouterr().err
    carol = default_users()[2]
    with FakeImmich(library, default_users()) as srv:
        monkeypatch.setenv("IMMICH_URL", srv.url)
        monkeypatch.setenv("IMMICH_API_KEY", carol.key)
        assert main(["--log", str(tmp_path / "cli.log"), *base]) == 2
        out = capsys.readouterr()
        assert "'face.read'" in out.err and "$IMMICH_API_KEY" in out.err
        monkeypatch.setenv("IMMICH_API_KEY", srv.users["alice"].key)
        srv.schedule_outage(after_requests=0, duration_s=60)
        assert main(["--log", str(tmp_path / "cli.log"), *base]) == 2
        out = capsys.readouterr()
        assert "re-run the same command" in out.err and "outage" in out.out
        srv.end_outage()
        assert main(base) == 0
        out = capsys.readouterr()
        assert "complete" in out.out and (tmp_path / "listing.parquet").exists()
    text = (tmp_path / "cli.log").read_text() + out.err + out.out
    text += (tmp_path / "w" / "immich" / "fam" / "state.json").read_text()
    assert carol.key not in text and srv.users["alice"].key not in text
