"""The composite quality score of a face (docs/quality.md): five components in [0, 1] and their
weighted sum. export-swap ranks crops by it; the contact sheets draw its components.

``frontality`` (head turn), ``det_score`` (detector confidence above roop's floor), ``symmetry``,
``face_size`` (short edge against the crop's full size) and ``sharpness`` (log Laplacian
variance); the weights are the ``export.weights`` config section (they sum to 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

COMPONENTS = ("frontality", "det_score", "symmetry", "face_size", "sharpness")


@dataclass(frozen=True)
class Norms:
    """How each raw quality measure maps to [0, 1] (docs/quality.md)."""

    max_angle: float = 90.0  # degrees of head turn (hypot of yaw and pitch) at which frontality is 0
    det_floor: float = 0.5  # detector score at which det_score is 0 (roop's detection threshold)
    full_face: float = 256.0  # face short edge (px) at which face_size is 1: no upscaling into the crop
    blur_lo: float = 30.0  # Laplacian variance at which sharpness is 0 ...
    blur_hi: float = 3000.0  # ... and 1 (log scale in between)
    neutral: float = 0.5  # a component that cannot be measured (no quality table)


def norms_for(out_size: int, pad_ratio: float) -> Norms:
    """The norms for crops of ``out_size`` px with ``pad_ratio`` padding: a face is full size when
    it fills the crop without upscaling."""
    return Norms(full_face=out_size / (1.0 + 2.0 * pad_ratio))


def kps_yaw(kps: np.ndarray) -> np.ndarray:
    """A rough yaw (degrees) from 5 keypoints, for faces without a pose.

    The nose tip's offset from the eyes' midpoint, in half eye distances, is about
    0.94·tan(yaw) for an average face (nose tip ~30 mm in front of the eyes, eyes ~64 mm apart).
    """
    k = np.asarray(kps, np.float64).reshape(-1, 5, 2)
    mid = (k[:, 0, 0] + k[:, 1, 0]) / 2
    half = np.maximum(np.abs(k[:, 1, 0] - k[:, 0, 0]) / 2, 1e-6)
    return np.degrees(np.arctan(((k[:, 2, 0] - mid) / half) / 0.94))


def frontality(yaw: np.ndarray, pitch: np.ndarray, norms: Norms) -> np.ndarray:
    """1 for a face looking into the camera, 0 at ``max_angle`` of combined turn (roll is free)."""
    pitch = np.nan_to_num(np.asarray(pitch, np.float64), nan=0.0)
    angle = np.hypot(np.asarray(yaw, np.float64), pitch)
    return np.clip(1.0 - angle / norms.max_angle, 0.0, 1.0)


def det_component(det: np.ndarray, norms: Norms) -> np.ndarray:
    return np.clip((np.asarray(det, np.float64) - norms.det_floor) / (1.0 - norms.det_floor), 0.0, 1.0)


def size_component(short: np.ndarray, norms: Norms) -> np.ndarray:
    return np.clip(np.asarray(short, np.float64) / norms.full_face, 0.0, 1.0)


def sharpness_component(blur: np.ndarray, norms: Norms) -> np.ndarray:
    b = np.maximum(np.asarray(blur, np.float64), 1e-9)
    return np.clip(np.log(b / norms.blur_lo) / np.log(norms.blur_hi / norms.blur_lo), 0.0, 1.0)


def quality_components(faces: pd.DataFrame, quality: pd.DataFrame, norms: Norms) -> pd.DataFrame:
    """The five components per face (rows as ``faces``); unmeasurable ones are ``norms.neutral``."""

    def col(name: str) -> np.ndarray:
        return quality[name].to_numpy(np.float64) if name in quality.columns else np.full(len(quality), np.nan)

    yaw, pitch = col("yaw"), col("pitch")
    if len(faces):
        fallback = kps_yaw(np.stack(faces["kps"].to_numpy()))
        no_pose = np.isnan(yaw)
        yaw = np.where(no_pose, fallback, yaw)
        pitch = np.where(no_pose, 0.0, pitch)
    out = pd.DataFrame(
        {
            "frontality": frontality(yaw, pitch, norms),
            "det_score": det_component(col("det_score"), norms),
            "symmetry": np.clip(col("symmetry"), 0.0, 1.0),
            "face_size": size_component(col("face_short"), norms),
            "sharpness": sharpness_component(col("blur"), norms),
        },
        index=faces["face_key"].to_numpy(),
    )
    unknown = np.isnan(np.column_stack([col("symmetry"), col("blur"), col("det_score"), col("face_short")]))
    for i, name in enumerate(("symmetry", "sharpness", "det_score", "face_size")):
        out.loc[unknown[:, i], name] = norms.neutral
    return out


def composite_score(components: pd.DataFrame, weights: Mapping[str, float]) -> np.ndarray:
    return sum(float(weights[k]) * components[k].to_numpy(np.float64) for k in COMPONENTS)
