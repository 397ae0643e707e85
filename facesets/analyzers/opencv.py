"""The ``opencv`` backend: YuNet (detector) + SFace (recognizer), both run by ONNX Runtime.

ONNX Runtime (not OpenCV's DNN module) runs the models so that the provider list means
the same for both backends (CPU, CUDA, DirectML). YuNet's output decoding therefore lives
here; it follows OpenCV's FaceDetectorYN (objdetect/src/face_detect.cpp) and a test
compares it with ``cv2.FaceDetectorYN`` on real photos.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from facesets.analyzers.base import Detection, align_face, l2_normalize, letterbox, nms, ort_session, settings_id
from facesets.analyzers.onnx_graph import fast_graph
from facesets.models import SFACE, YUNET

log = logging.getLogger(__name__)
STRIDES = (8, 16, 32)


def decode_yunet(
    outputs: dict[str, np.ndarray], size: int, score_thresh: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """YuNet raw outputs -> (boxes Nx4 xyxy, kps Nx5x2, scores N) in input pixels."""
    boxes, kpss, scores = [], [], []
    for s in STRIDES:
        cols = rows = size // s
        cls = outputs[f"cls_{s}"].reshape(-1)
        obj = outputs[f"obj_{s}"].reshape(-1)
        score = np.sqrt(np.clip(cls, 0, 1) * np.clip(obj, 0, 1))
        idx = np.nonzero(score >= score_thresh)[0]
        if idx.size == 0:
            continue
        r, c = np.divmod(idx, cols)
        assert rows * cols == cls.size
        bb = outputs[f"bbox_{s}"].reshape(-1, 4)[idx]
        kp = outputs[f"kps_{s}"].reshape(-1, 10)[idx]
        cx = (c + bb[:, 0]) * s
        cy = (r + bb[:, 1]) * s
        w = np.exp(bb[:, 2]) * s
        h = np.exp(bb[:, 3]) * s
        boxes.append(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1))
        kx = (kp[:, 0::2] + c[:, None]) * s
        ky = (kp[:, 1::2] + r[:, None]) * s
        kpss.append(np.stack([kx, ky], 2))
        scores.append(score[idx])
    if not boxes:
        return np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32), np.zeros(0, np.float32)
    return (
        np.concatenate(boxes).astype(np.float32),
        np.concatenate(kpss).astype(np.float32),
        np.concatenate(scores).astype(np.float32),
    )


class OpenCVAnalyzer:
    embedding_dim = 128

    def __init__(
        self,
        detector_path: Path,
        recognizer_path: Path,
        det_size: int = 640,
        det_thresh: float = 0.6,
        nms_thresh: float = 0.3,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        flip_tta: bool = False,
    ) -> None:
        self.det_size = det_size
        self.flip_tta = flip_tta
        self.det_thresh = det_thresh
        self.nms_thresh = nms_thresh
        self.detector = ort_session(str(detector_path), providers)
        self.recognizer = ort_session(fast_graph(recognizer_path), providers)
        shape = self.detector.get_inputs()[0].shape
        self._fixed = shape[2] if isinstance(shape[2], int) else None
        if self._fixed and det_size > self._fixed:
            raise ValueError(
                f"embed.det_size={det_size}: the YuNet model's input is fixed at {self._fixed}x{self._fixed}"
            )
        settings = {
            "det": YUNET.sha256,
            "rec": SFACE.sha256,
            "det_size": det_size,
            "det_thresh": det_thresh,
            "nms": nms_thresh,
            "align": "umeyama-arcface112-v1",
            "rec_graph": "fast_graph-v1",  # PRelu rewritten, see onnx_graph.py
        }
        if flip_tta:  # only when on, so the store key of the default settings stays what it was
            settings["tta"] = "flip-mean-v1"
        self.model_id = settings_id("opencv-yunet-sface", settings)

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        size = self._fixed or self.det_size
        small, factor = letterbox(rgb, self.det_size)  # fit det_size, then pad to the model's input
        canvas = np.zeros((size, size, 3), np.uint8)
        canvas[: small.shape[0], : small.shape[1]] = small
        blob = canvas[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32)  # BGR, NCHW, 0..255
        names = [o.name for o in self.detector.get_outputs()]
        outs = dict(zip(names, self.detector.run(names, {self.detector.get_inputs()[0].name: blob}), strict=True))
        boxes, kps, scores = decode_yunet(outs, size, self.det_thresh)
        keep = nms(boxes, scores, self.nms_thresh)
        h, w = rgb.shape[:2]
        dets = []
        for i in keep:
            b = boxes[i] / factor
            b = np.array([max(b[0], 0), max(b[1], 0), min(b[2], w), min(b[3], h)], np.float32)
            if b[2] - b[0] < 1 or b[3] - b[1] < 1:
                continue
            dets.append(Detection(b, (kps[i] / factor).astype(np.float32), float(scores[i])))
        return dets

    def embed(self, rgb: np.ndarray, detections: Sequence[Detection]) -> np.ndarray:
        if not detections:
            return np.zeros((0, self.embedding_dim), np.float32)
        crops = np.stack([align_face(rgb, d.kps) for d in detections])  # RGB, as SFace expects
        blob = crops.transpose(0, 3, 1, 2).astype(np.float32)
        inp = self.recognizer.get_inputs()[0].name
        # One face per run: the model's batch dimension is fixed at 1.
        feats = [self._features(inp, blob[i : i + 1]) for i in range(len(blob))]
        return l2_normalize(np.stack(feats))

    def _features(self, inp: str, one: np.ndarray) -> np.ndarray:
        """SFace features of one aligned face; with ``flip_tta`` the mean of the unit features of
        the face and its mirror image (the ArcFace template is left-right symmetric)."""
        f = self.recognizer.run(None, {inp: one})[0][0]
        if not self.flip_tta:
            return f
        m = self.recognizer.run(None, {inp: np.ascontiguousarray(one[:, :, :, ::-1])})[0][0]
        return l2_normalize(f) + l2_normalize(m)
