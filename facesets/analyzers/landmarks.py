"""The insightface pack's landmark models (landmark_3d_68 with its pose, landmark_2d_106).

buffalo_l ships ``1k3d68.onnx`` and ``2d106det.onnx`` besides its detector and recognizer.
They need only a face box (insightface crops 1.5x the box's long side to the model's input),
so enrich runs them on the box of the face table, through insightface's own ``Landmark``
class. Only these two models are loaded (``insightface.load_pack_models``: no detector,
recognizer or genderage session), with the thread count enrich gives, serialised under
DirectML; the pose is
insightface's (an affine fit of its mean 3D face to the 68 predicted points), in degrees,
as (pitch, yaw, roll).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

TASKS = ("landmark_3d_68", "landmark_2d_106")


@dataclass(frozen=True)
class Landmarks:
    landmark_2d_106: np.ndarray | None  # 106 x 2, pixels of the image given
    landmark_3d_68: np.ndarray | None  # 68 x 3
    pose: tuple[float, float, float] | None  # pitch, yaw, roll (degrees)


class InsightFaceLandmarks:
    """Landmark models of a FaceAnalysis pack; ``available`` is False when the pack has none."""

    def __init__(
        self,
        pack: str = "buffalo_l",
        root: str = "~/.insightface",
        providers: Sequence[str] = ("CPUExecutionProvider",),
        threads: int = 1,
    ) -> None:
        from facesets.analyzers.insightface import load_pack_models

        loaded = load_pack_models(pack, str(Path(root).expanduser()), TASKS, providers, threads)
        self.models = {t: loaded.models[t] for t in TASKS if t in loaded.models}
        for model in self.models.values():
            model.prepare(0)
        log.info("insightface pack %s: landmark models %s", pack, sorted(self.models) or "none")

    @property
    def available(self) -> bool:
        return bool(self.models)

    def run(self, rgb: np.ndarray, bbox: np.ndarray) -> Landmarks:
        from insightface.app.common import Face

        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        face = Face(bbox=np.asarray(bbox, np.float32))
        for model in self.models.values():
            model.get(bgr, face)
        lmk2 = face.get("landmark_2d_106")
        lmk3 = face.get("landmark_3d_68")
        pose = face.get("pose")
        return Landmarks(
            landmark_2d_106=None if lmk2 is None else np.asarray(lmk2, np.float32),
            landmark_3d_68=None if lmk3 is None else np.asarray(lmk3, np.float32),
            pose=None if pose is None else tuple(float(v) for v in pose),
        )
