"""The CLI: clear errors with exit code 2, settings precedence."""

import argparse
import subprocess
import sys

from facesets.cli.embed import embed_settings as _embed_settings


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "facesets", *args], capture_output=True, text=True, cwd=cwd)


def test_bad_config_value_exits_2_naming_the_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("embed:\n  det_size: 100\n")
    proc = _run("check-config", "--configfile", str(cfg))
    assert proc.returncode == 2
    assert str(cfg) in proc.stderr and "embed.det_size" in proc.stderr and "minimum 160" in proc.stderr


def test_embed_rejects_a_source_that_is_neither_folder_nor_listing(tmp_path):
    proc = _run("embed", str(tmp_path / "nope.txt"), str(tmp_path / "faces.parquet"))
    assert proc.returncode == 2 and "not a folder or a listing" in proc.stderr


def test_settings_precedence(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("embed:\n  det_size: 480\n  batch_images: 8\n")
    ns = argparse.Namespace(
        configfile=[str(cfg)],
        embed_settings='{"batch_images": 4, "min_face": 30}',
        det_size=320,
        workers=None,
        batch_images=None,
        min_face=None,
        det_thresh=0.7,
        backend="opencv",
    )
    s = _embed_settings(ns)
    assert s["det_size"] == 320  # flag beats file
    assert s["batch_images"] == 4 and s["min_face"] == 30  # JSON beats file
    assert s["opencv"]["det_thresh"] == 0.7 and s["opencv"]["nms_thresh"] == 0.3  # defaults kept
