"""The analyzer interface and the geometry both backends share."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np

# ArcFace's canonical 5-point template for a 112x112 aligned face (insightface, SFace).
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


@dataclass(frozen=True)
class Detection:
    """A face in some image's pixel space."""

    bbox: np.ndarray  # x1, y1, x2, y2 (float32)
    kps: np.ndarray  # 5 x 2 (float32)
    score: float

    def scaled(self, factor: float) -> Detection:
        return Detection(self.bbox * factor, self.kps * factor, self.score)


class Analyzer(Protocol):
    """What the embed pipeline needs from a backend. Images are RGB uint8 arrays."""

    model_id: str  # names the models and every setting that changes results
    embedding_dim: int
    det_size: int

    def detect(self, rgb: np.ndarray) -> list[Detection]: ...

    def embed(self, rgb: np.ndarray, detections: Sequence[Detection]) -> np.ndarray: ...


def settings_id(prefix: str, settings: dict[str, Any]) -> str:
    """A short stable id for a model + settings combination (the face-store key)."""
    blob = json.dumps(settings, sort_keys=True).encode()
    return f"{prefix}-{hashlib.sha256(blob).hexdigest()[:10]}"


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (rotation, uniform scale, translation), 2x3."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    n = src.shape[0]
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    cov = dc.T @ sc / n
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    r = u @ np.diag(d) @ vt
    var_s = (sc**2).sum() / n
    scale = (s * d).sum() / var_s if var_s > 0 else 1.0
    t = mu_d - scale * r @ mu_s
    return np.hstack([scale * r, t[:, None]])


def align_face(rgb: np.ndarray, kps: np.ndarray, size: int = 112) -> np.ndarray:
    """Warp a face to the ArcFace template (size x size)."""
    m = umeyama(kps, ARCFACE_TEMPLATE * (size / 112.0))
    return cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def nms(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> list[int]:
    """Greedy non-maximum suppression; ties broken by index for determinism."""
    order = np.lexsort((np.arange(len(scores)), -scores))
    x1, y1, x2, y2 = boxes.T
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        xx1 = np.maximum(x1[i], x1[rest])
        yy1 = np.maximum(y1[i], y1[rest])
        xx2 = np.minimum(x2[i], x2[rest])
        yy2 = np.minimum(y2[i], y2[rest])
        inter = np.maximum(xx2 - xx1, 0) * np.maximum(yy2 - yy1, 0)
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[iou <= thresh]
    return keep


def letterbox(rgb: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """Resize to fit a size x size canvas (top-left anchored, zero pad). Returns (canvas, factor)."""
    h, w = rgb.shape[:2]
    factor = min(size / w, size / h)
    nw, nh = max(1, round(w * factor)), max(1, round(h * factor))
    interp = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(rgb, (nw, nh), interpolation=interp) if (nw, nh) != (w, h) else rgb
    canvas = np.zeros((size, size, 3), np.uint8)
    canvas[:nh, :nw] = resized
    return canvas, factor


class SerializedSession:
    """An ONNX Runtime session whose ``run`` admits one caller at a time.

    DirectML "does not support multi-threaded calls to Run on the same inference session"
    (ONNX Runtime's DirectML EP docs); the embed's worker threads share one analyzer, so their
    decodes stay parallel while the DirectML runs queue here.
    """

    def __init__(self, session) -> None:
        import threading

        self._session = session
        self._lock = threading.Lock()

    def run(self, *args, **kwargs):
        with self._lock:
            return self._session.run(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._session, name)


def needs_serial_runs(providers: Sequence[str]) -> bool:
    """DirectML sessions need memory patterns off and one Run at a time (ONNX Runtime docs)."""
    return "DmlExecutionProvider" in providers


def ort_session(model: str | bytes, providers: Sequence[str]):  # -> onnxruntime.InferenceSession
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    available = set(ort.get_available_providers())
    chosen = [p for p in providers if p in available] or ["CPUExecutionProvider"]
    if list(chosen) != list(providers):
        import logging

        logging.getLogger(__name__).warning("ONNX Runtime providers %s requested, using %s", list(providers), chosen)
    serial = needs_serial_runs(chosen)
    if serial:
        opts.enable_mem_pattern = False
    session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), sess_options=opts, providers=chosen)
    return SerializedSession(session) if serial else session
