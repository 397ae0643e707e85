"""The ``insightface`` backend: a FaceAnalysis model pack (default buffalo_l).

insightface downloads the pack to ``root`` on first use (its own download path, kept for
users; not reachable from our CI). ``pack`` may also be a folder of ONNX files, which is
how the tests drive this adapter through the real insightface code with tiny generated
models. Detection runs on the reduced-size copy, recognition on a copy with enough
resolution (the embed pipeline decides), like the opencv backend.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from facesets.analyzers.base import Detection, l2_normalize, settings_id

log = logging.getLogger(__name__)


def _pack_digest(model_dir: str) -> str:
    """Content id of the pack's ONNX files, so a changed pack is a new store key.

    Every byte is hashed: a retrained layer changes the file's middle or end, not its
    size or first bytes (insightface reads every file of the pack to load it anyway).
    """
    h = hashlib.sha256()
    for f in sorted(Path(model_dir).glob("*.onnx")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()[:16]


class InsightFaceAnalyzer:
    def __init__(
        self,
        pack: str = "buffalo_l",
        root: str = "~/.insightface",
        det_size: int = 640,
        det_thresh: float = 0.5,
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ) -> None:
        import onnxruntime as ort
        from insightface.app import FaceAnalysis

        available = set(ort.get_available_providers())
        chosen = [p for p in providers if p in available] or ["CPUExecutionProvider"]
        if list(chosen) != list(providers):
            log.warning("providers %s requested, %s available: using %s", list(providers), sorted(available), chosen)
        self.app = FaceAnalysis(
            name=pack, root=str(Path(root).expanduser()), providers=chosen, allowed_modules=["detection", "recognition"]
        )
        if "recognition" not in self.app.models:
            raise ValueError(f"insightface pack {pack!r} has no recognition model")
        self.app.prepare(ctx_id=0, det_thresh=det_thresh, det_size=(det_size, det_size))
        self.det_size = det_size
        self.recognizer = self.app.models["recognition"]
        self.embedding_dim = int(self.recognizer.output_shape[-1])
        self.model_id = settings_id(
            f"insightface-{Path(pack).name}",
            {
                "pack": _pack_digest(self.app.model_dir),
                "det_size": det_size,
                "det_thresh": det_thresh,
                "align": "insightface-norm_crop",
            },
        )

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        bboxes, kpss = self.app.det_model.detect(bgr, max_num=0, metric="default")
        dets = []
        for i in range(bboxes.shape[0]):
            kps = kpss[i] if kpss is not None else None
            if kps is None:
                continue  # alignment needs the 5 keypoints
            dets.append(Detection(bboxes[i, :4].astype(np.float32), kps.astype(np.float32), float(bboxes[i, 4])))
        return dets

    def embed(self, rgb: np.ndarray, detections: Sequence[Detection]) -> np.ndarray:
        from insightface.app.common import Face

        if not detections:
            return np.zeros((0, self.embedding_dim), np.float32)
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        feats = []
        for d in detections:
            face = Face(bbox=d.bbox, kps=d.kps, det_score=d.score)
            feats.append(np.asarray(self.recognizer.get(bgr, face), np.float32).reshape(-1))
        return l2_normalize(np.stack(feats))
