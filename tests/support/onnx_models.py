"""Tiny ONNX models in the shapes insightface routes as SCRFD and ArcFace (test fixtures).

They make no claim to find or recognise faces. They exist so that a test can drive our
insightface adapter through the real insightface code (FaceAnalysis, model_zoo routing,
SCRFD decoding, norm_crop alignment, ArcFaceONNX preprocessing) with models whose output
is known exactly:

* ``write_scrfd``: input ``[1, 3, height, width]`` (dynamic, like buffalo_l's det_10g),
  9 outputs in SCRFD's order for 3 strides (8, 16, 32) with 2 anchors and keypoints:
  ``score_8, score_16, score_32, bbox_8, bbox_16, bbox_32, kps_8, kps_16, kps_32`` of
  shapes ``[N_s, 1]``, ``[N_s, 4]``, ``[N_s, 10]`` (``N_s = H/s * W/s * 2``). Only
  stride 32, anchor 0 ever fires: its score is ``sigmoid(GAIN * (m - THRESH))`` where
  ``m`` is the mean preprocessed red value (``(R - 127.5) / 128``; channel 0 of the RGB
  blob SCRFD builds from its BGR input) over the ``BOX x BOX`` window centred on the
  anchor point. So a red-bright ``BOX``-pixel square on a dark image, centred on an anchor
  point (top-left corner at ``32 * k`` in detector-input pixels), gives exactly one
  detection, and a blue-bright one none (which catches a channel-order mix-up). Box
  distances (all 1, i.e. 32 px at stride 32) make the decoded box that square; keypoint
  offsets are the ArcFace 5-point template scaled into it.
* ``write_arcface``: input ``[batch, 3, 112, 112]`` -> output ``[batch, dim]``: a 4x4
  average pool, flatten, then a seeded random matrix (``arcface_weights``), no
  normalisation. Node names avoid ``Sub``/``Mul`` so insightface treats it as a
  non-mxnet model (input mean/std 127.5).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # onnxruntime 1.17+ runs IR 8 / opset 17

STRIDES = (8, 16, 32)
NUM_ANCHORS = 2
DET_STRIDE = 32  # the only level that fires
BOX = 64  # detector-input pixels: the square that fires, and the decoded box size
GAIN = 20.0
THRESH = 0.6
LOW = -30.0  # logit of the levels/anchors that never fire

REC_SIZE = 112
REC_POOL = 4

# ArcFace's canonical 5 points in a 112x112 crop (as in insightface.utils.face_align).
ARCFACE_DST = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)


def kps_offsets() -> np.ndarray:
    """Keypoint offsets from the box centre, in units of the box size (5 x 2)."""
    return (ARCFACE_DST - REC_SIZE / 2) / REC_SIZE


def expected_kps(x1: float, y1: float, size: float) -> np.ndarray:
    """Where the detector puts the 5 keypoints for a square box (any pixel space)."""
    return np.array([x1 + size / 2, y1 + size / 2]) + kps_offsets() * size


def _const(name: str, arr: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def _save(graph: onnx.GraphProto, path: str | Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="facesets-tests")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    onnx.save(model, str(path))
    return path


def write_scrfd(path: str | Path) -> Path:
    """Write the SCRFD-shaped detector (see the module docstring)."""
    nodes, inits = [], []
    outputs = {"score": [], "bbox": [], "kps": []}
    widths = {"score": 1, "bbox": 4, "kps": 10}
    inits.append(_const("zero", np.array(0.0, np.float32)))
    inits.append(_const("low", np.full((1, 1, 1, 1), LOW, np.float32)))
    inits.append(_const("bbox_dist", np.ones((1, 4 * NUM_ANCHORS, 1, 1), np.float32)))
    kps = np.tile(kps_offsets().reshape(-1) * (BOX / DET_STRIDE), NUM_ANCHORS).astype(np.float32)
    inits.append(_const("kps_dist", kps.reshape(1, 10 * NUM_ANCHORS, 1, 1)))
    for w in (1, 4, 10):
        inits.append(_const(f"shape_{w}", np.array([-1, w], np.int64)))
    for s in STRIDES:
        if s == DET_STRIDE:
            # Mean of channel 0 (red) over the BOX x BOX window centred on each anchor point (g * s), times GAIN.
            k, pads = BOX, [BOX // 2, BOX // 2, 0, 0]
            weight = np.zeros((1, 3, k, k), np.float32)
            weight[:, 0] = GAIN / (k * k)
            bias = np.array([-GAIN * THRESH], np.float32)
        else:
            k, pads = s, [0, 0, 0, 0]
            weight = np.zeros((1, 3, k, k), np.float32)
            bias = np.array([LOW], np.float32)
        inits += [_const(f"w{s}", weight), _const(f"b{s}", bias)]
        nodes.append(
            helper.make_node(
                "Conv", ["input.1", f"w{s}", f"b{s}"], [f"logit{s}"], kernel_shape=[k, k], strides=[s, s], pads=pads
            )
        )
        nodes.append(helper.make_node("Mul", [f"logit{s}", "zero"], [f"zeros{s}"]))  # [1,1,h,w] of 0
        nodes.append(helper.make_node("Add", [f"zeros{s}", "low"], [f"logit{s}_a1"]))
        nodes.append(helper.make_node("Concat", [f"logit{s}", f"logit{s}_a1"], [f"logits{s}"], axis=1))
        nodes.append(helper.make_node("Sigmoid", [f"logits{s}"], [f"score{s}_map"]))
        nodes.append(helper.make_node("Add", [f"zeros{s}", "bbox_dist"], [f"bbox{s}_map"]))
        nodes.append(helper.make_node("Add", [f"zeros{s}", "kps_dist"], [f"kps{s}_map"]))
        for kind in ("score", "bbox", "kps"):
            # [1, A*c, h, w] -> [1, h, w, A*c] -> [h*w*A, c]: anchor-major within a cell, as SCRFD decodes.
            nodes.append(helper.make_node("Transpose", [f"{kind}{s}_map"], [f"{kind}{s}_nhwc"], perm=[0, 2, 3, 1]))
            out = f"{kind}_{s}"
            nodes.append(helper.make_node("Reshape", [f"{kind}{s}_nhwc", f"shape_{widths[kind]}"], [out]))
            outputs[kind].append(helper.make_tensor_value_info(out, TensorProto.FLOAT, [f"n{s}", widths[kind]]))
    graph = helper.make_graph(
        nodes,
        "tiny_scrfd",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "height", "width"])],
        outputs["score"] + outputs["bbox"] + outputs["kps"],
        initializer=inits,
    )
    return _save(graph, path)


def arcface_weights(dim: int = 64, seed: int = 0) -> np.ndarray:
    """The recognizer's projection matrix ((3 * 28 * 28) x dim, float32)."""
    n = 3 * (REC_SIZE // REC_POOL) ** 2
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, dim)) / np.sqrt(n)).astype(np.float32)


def write_arcface(path: str | Path, dim: int = 64, seed: int = 0, weights: np.ndarray | None = None) -> Path:
    """Write the ArcFace-shaped recognizer (see the module docstring); ``weights`` overrides the seeded matrix."""
    proj = arcface_weights(dim, seed) if weights is None else np.asarray(weights, np.float32)
    assert proj.shape == (3 * (REC_SIZE // REC_POOL) ** 2, dim)
    nodes = [
        helper.make_node(
            "AveragePool", ["data"], ["pooled"], name="pool", kernel_shape=[REC_POOL] * 2, strides=[REC_POOL] * 2
        ),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten", axis=1),
        helper.make_node("MatMul", ["flat", "proj"], ["fc1"], name="project"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_arcface",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["batch", 3, REC_SIZE, REC_SIZE])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["batch", dim])],
        initializer=[_const("proj", proj)],
    )
    return _save(graph, path)


def write_pack(folder: str | Path, dim: int = 64, seed: int = 0) -> Path:
    """A FaceAnalysis-style model folder holding both models."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_scrfd(folder / "det_tiny.onnx")
    write_arcface(folder / "w_tiny.onnx", dim, seed)
    return folder


def write_constant(path: str | Path, size: int, n: int, value: float = 0.0) -> Path:
    """Input ``[1, 3, size, size]`` -> output ``[1, n]`` filled with ``value`` (whatever the image):
    at size 192 insightface routes it as a Landmark model (n = 3309: landmark_3d_68, 212:
    landmark_2d_106), at 96 as genderage (n = 3)."""
    nodes = [
        helper.make_node("ReduceMean", ["data"], ["m"], name="avg", axes=[1, 2, 3], keepdims=1),
        helper.make_node("Flatten", ["m"], ["mf"], name="flat", axis=1),
        helper.make_node("MatMul", ["mf", "zeros"], ["z"], name="times_zero"),
        helper.make_node("Add", ["z", "const"], ["fc1"], name="plus_const"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_constant",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, n])],
        initializer=[
            _const("zeros", np.zeros((1, n), np.float32)),
            _const("const", np.full((1, n), value, np.float32)),
        ],
    )
    return _save(graph, path)


def write_full_pack(folder: str | Path, dim: int = 64, seed: int = 0) -> Path:
    """A pack with buffalo_l's five roles: detector, recognizer, the two landmark models and
    genderage (FaceAnalysis builds a session for each of them)."""
    folder = write_pack(folder, dim, seed)
    write_constant(folder / "1k3d68_tiny.onnx", 192, 3309)
    write_constant(folder / "2d106det_tiny.onnx", 192, 212)
    write_constant(folder / "genderage_tiny.onnx", 96, 3)
    return folder
