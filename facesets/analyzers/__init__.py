"""Face analyzers: one interface (``base.Analyzer``), several backends."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from facesets.analyzers.base import Analyzer, Detection

__all__ = ["Analyzer", "Detection", "create_analyzer"]


def create_analyzer(
    backend: str,
    embed_settings: Mapping[str, Any],
    providers: Sequence[str] = ("CPUExecutionProvider",),
    model_dir: Path | None = None,
) -> Analyzer:
    """Build the analyzer named by ``backend`` from the ``embed`` config section."""
    if backend == "opencv":
        from facesets.analyzers.opencv import OpenCVAnalyzer
        from facesets.models import ensure_opencv_models

        if model_dir is None:
            raise ValueError("the opencv backend needs model_dir")
        paths = ensure_opencv_models(model_dir)
        s = embed_settings["opencv"]
        return OpenCVAnalyzer(
            detector_path=paths["face_detection_yunet_2023mar.onnx"],
            recognizer_path=paths["face_recognition_sface_2021dec.onnx"],
            det_size=embed_settings["det_size"],
            det_thresh=s["det_thresh"],
            nms_thresh=s["nms_thresh"],
            providers=providers,
        )
    if backend == "insightface":
        from facesets.analyzers.insightface import InsightFaceAnalyzer

        s = embed_settings["insightface"]
        return InsightFaceAnalyzer(
            pack=s["pack"],
            root=s["root"],
            det_size=embed_settings["det_size"],
            det_thresh=s["det_thresh"],
            providers=providers,
        )
    raise ValueError(f"unknown backend {backend!r} (allowed: opencv, insightface)")
