"""insightface packs loaded lean and checked (issue 15), with tiny generated ONNX models.

* Session count: FaceAnalysis builds a session per ONNX file of the pack (five for a
  buffalo_l-shaped pack) whatever ``allowed_modules`` says; our loader builds only the
  sessions the stage needs (2 for embed, 2 for landmarks, 1 for the crop checker).
* Threading: every session gets the thread count the stage asked for (FaceAnalysis: ONNX
  Runtime's default, one thread per core per session).
* DirectML: a fake provider lock (a ``run`` wrapper that fails when two threads are inside
  the same session at once, which DirectML does not support) passes with 8 threads when the
  sessions are serialised, and fails without (so the probe can fail).
* Per-pack thresholds and the pack check (published digests, first-use record, nested files).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest

from facesets import thresholds
from facesets.analyzers import insightface as ins
from facesets.models import ModelError, check_insightface_pack
from tests.support import onnx_models as om

pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")

DIM = 32


@pytest.fixture
def full_pack(tmp_path):
    return om.write_full_pack(tmp_path / "buffalo_tiny", dim=DIM, seed=3)


@pytest.fixture
def sessions(monkeypatch):
    """Every ONNX Runtime session built, with its options."""
    made: list[ort.InferenceSession] = []
    original = ort.InferenceSession.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(ort.InferenceSession, "__init__", init)
    return made


def face_image() -> np.ndarray:
    img = np.full((480, 640, 3), 20, np.uint8)
    rng = np.random.default_rng(1)
    img[192:256, 192:256] = np.stack(
        [rng.integers(200, 256, (64, 64)), rng.integers(90, 140, (64, 64)), rng.integers(30, 80, (64, 64))], -1
    )
    return img


def test_faceanalysis_builds_every_session_our_loader_only_the_needed(full_pack, tmp_path, sessions):
    from insightface.app import FaceAnalysis

    FaceAnalysis(name=str(full_pack), root=str(tmp_path), allowed_modules=["detection", "recognition"])
    baseline = len(sessions)
    assert baseline == 5  # the problem: one per file, whatever allowed_modules says
    assert all(s.get_session_options().intra_op_num_threads == 0 for s in sessions)  # ORT default: all cores

    sessions.clear()
    a = ins.InsightFaceAnalyzer(pack=str(full_pack), root=str(tmp_path), threads=3)
    assert len(sessions) == 2 and set(a.pack.models) == {"detection", "recognition"}
    dets = a.detect(face_image())
    assert len(dets) == 1 and a.embed(face_image(), dets).shape == (1, DIM)
    # SCRFD adds one fixed-size session for the 640x640 input on first use; nothing else
    assert len(sessions) == 3
    for s in sessions:
        o = s.get_session_options()
        assert (o.intra_op_num_threads, o.inter_op_num_threads) == (3, 1)
        assert o.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL

    sessions.clear()
    from facesets.analyzers.landmarks import InsightFaceLandmarks

    lm = InsightFaceLandmarks(str(full_pack), str(tmp_path), threads=2)
    assert sorted(lm.models) == ["landmark_2d_106", "landmark_3d_68"] and len(sessions) == 2
    assert all(s.get_session_options().intra_op_num_threads == 2 for s in sessions)

    sessions.clear()
    checker = ins.scrfd_crop_checker(str(full_pack), str(tmp_path))
    assert checker is not None and len(sessions) == 1 and checker.count(face_image()) == 1


@pytest.fixture
def fake_provider_lock(monkeypatch):
    """ONNX Runtime's DirectML rule, enforced on the CPU: two concurrent runs of one session fail."""
    inside: dict[int, int] = {}
    lock = threading.Lock()
    violations: list[str] = []
    runs = [0]
    original = ort.InferenceSession.run

    def run(self, *args, **kwargs):
        with lock:
            inside[id(self)] = inside.get(id(self), 0) + 1
            clash = inside[id(self)] > 1
            runs[0] += 1
        try:
            if clash:
                violations.append("concurrent Run on one session")
            time.sleep(0.003)  # widen the window a real provider's kernel launch would have
            return original(self, *args, **kwargs)
        finally:
            with lock:
                inside[id(self)] -= 1

    monkeypatch.setattr(ort.InferenceSession, "run", run)
    return violations, runs


def hammer(analyzer, n: int = 48) -> None:
    img = face_image()

    def one(_):
        dets = analyzer.detect(img)
        analyzer.embed(img, dets)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(n)))


def test_directml_serialises_insightface_sessions(full_pack, tmp_path, monkeypatch, fake_provider_lock):
    violations, runs = fake_provider_lock
    monkeypatch.setattr(ins, "needs_serial_runs", lambda providers: True)  # as with DmlExecutionProvider
    a = ins.InsightFaceAnalyzer(pack=str(full_pack), root=str(tmp_path))
    assert isinstance(a.det_model.session, ins.SerializedSession)
    assert isinstance(a.recognizer.session, ins.SerializedSession)
    hammer(a)
    assert runs[0] >= 96 and violations == []
    sizes = a.det_model.resolution_sessions  # the per-size detector session is serialised too
    assert sizes and all(isinstance(s, ins.SerializedSession) for s in sizes.values())


def test_without_serialisation_the_fake_lock_catches_concurrent_runs(full_pack, tmp_path, fake_provider_lock):
    violations, _ = fake_provider_lock
    a = ins.InsightFaceAnalyzer(pack=str(full_pack), root=str(tmp_path))  # CPU: not serialised
    hammer(a)
    assert violations  # the probe is able to fail


def test_thresholds_are_per_pack():
    assert thresholds.for_model("insightface-buffalo_l-0123456789") is thresholds.ARCFACE
    assert thresholds.for_model("insightface-buffalo_m-0123456789") is thresholds.ARCFACE  # same w600k_r50
    for pack in ("buffalo_s", "antelopev2", "my-own-pack"):
        with pytest.raises(ValueError, match=rf"insightface pack '{pack}'.*embed.insightface.pack"):
            thresholds.for_model(f"insightface-{pack}-0123456789")
    with pytest.raises(ValueError, match="antelopev2"):
        thresholds.era_for_model("insightface-antelopev2-0123456789")


def test_pack_check_first_use_then_tamper(full_pack, tmp_path):
    root = tmp_path / "root"
    digests = ins.file_digests(full_pack)
    assert check_insightface_pack("buffalo_tiny", full_pack, digests, root) == "first-use"
    assert check_insightface_pack("buffalo_tiny", full_pack, digests, root) == "recorded"
    bad = dict(digests, **{"w_tiny.onnx": "0" * 64})
    with pytest.raises(ModelError, match=r"w_tiny\.onnx"):
        check_insightface_pack("buffalo_tiny", full_pack, bad, root)
    extra = dict(digests, **{"extra.onnx": "1" * 64})
    with pytest.raises(ModelError, match=r"extra\.onnx"):
        check_insightface_pack("buffalo_tiny", full_pack, extra, root)


def test_pack_check_against_published_digests(full_pack, tmp_path):
    digests = ins.file_digests(full_pack)
    known = {"buffalo_tiny": {"source": "test", "files": digests}}
    assert check_insightface_pack("buffalo_tiny", full_pack, digests, tmp_path, known) == "published"
    wrong = {"buffalo_tiny": {"source": "test", "files": {**digests, "det_tiny.onnx": "f" * 64}}}
    with pytest.raises(ModelError, match=r"det_tiny\.onnx.*published"):
        check_insightface_pack("buffalo_tiny", full_pack, digests, tmp_path, wrong)
    assert not (tmp_path / "facesets-pack-digests").exists()  # published digests need no record


def test_pack_digest_includes_nested_files(full_pack):
    before = ins._pack_digest(full_pack)
    (full_pack / "sub").mkdir()
    (full_pack / "sub" / "extra.onnx").write_bytes(b"nested")
    assert "sub/extra.onnx" in ins.file_digests(full_pack)
    assert ins._pack_digest(full_pack) != before


def test_crop_checker_needs_the_pack_on_disk(tmp_path):
    assert ins.scrfd_crop_checker("buffalo_l", str(tmp_path / "empty-root")) is None  # no download attempted
    assert not (tmp_path / "empty-root").exists()


def test_export_redetection_adds_the_packs_scrfd_when_on_disk(tmp_path):
    root = tmp_path / "root"
    om.write_full_pack(root / "models" / "buffalo_l", dim=DIM, seed=3)
    img = face_image()

    def yunet_sees_nothing(rgb):
        return []

    detect, det_id = ins.with_pack_detector(
        yunet_sees_nothing, "opencv-x", {"pack": "buffalo_l", "root": str(root)}, ()
    )
    assert det_id.startswith("opencv-x+scrfd-buffalo_l-") and len(detect(img)) == 1
    # a face both detectors see counts once
    once = ins.with_pack_detector(detect, "y", {"pack": "buffalo_l", "root": str(root)}, ())[0]
    assert len(once(img)) == 1
    none = {"pack": "buffalo_l", "root": str(tmp_path / "none")}
    alone, alone_id = ins.with_pack_detector(yunet_sees_nothing, "opencv-x", none, ())
    assert alone is yunet_sees_nothing and alone_id == "opencv-x"
