"""Face geometry from the 5 detector keypoints: head pose (solvePnP) and landmark symmetry.

Keypoint order (the face table's ``kps``): image-left eye, image-right eye, nose tip,
image-left mouth corner, image-right mouth corner, in image pixels (x right, y down).

Head pose: a generic 3D face (``FACE5_3D``)
-------------------------------------------
x and y are the ArcFace 5-point template (the canonical *frontal* layout every aligner in
this project warps to, facesets.analyzers.base.ARCFACE_TEMPLATE), made exactly left/right
symmetric and moved so the eye midpoint is the origin; units are template pixels (the
template's inter-ocular distance is 35.2). z is the depth of each point relative to the
eyes, taken from insightface's mean 3D face (``insightface/data/objects/meanshape_68.pkl``:
the mean of the 6 eye-contour points per eye, point 30 for the nose tip, points 48/54 for
the mouth corners) scaled by the ratio of the two inter-ocular distances: nose tip 18.8
and mouth corners 4.15 template pixels in front of the eyes. Using the template's x/y (and
not the mean shape's, whose nose tip sits higher between eyes and mouth than the detectors'
nose keypoint) makes a face whose keypoints *are* the template read as exactly frontal.

The model frame is OpenCV's object frame: x toward image right, y down, z away from the
camera (the face looks toward -z). The camera is a pinhole with focal length
``max(width, height)`` pixels (about a 53° field of view across the long side, a normal
lens), principal point at the image centre, no distortion. ``cv2.solvePnP`` (SQPnP, the
global minimiser, refined by Levenberg-Marquardt) gives R, the rotation from model to camera,
and t, the eye midpoint in camera coordinates. The pose reported is relative to the line of
sight: ``R_rel = V^T R`` where V is the smallest rotation taking the optical axis to the ray
toward t. So a face that looks into the lens reads as frontal wherever it sits in the frame
(as with insightface's affine fit), not as turned by its angle off the optical axis.

Angles follow insightface (``insightface.utils.transform.matrix2angle``, which buffalo_l's
landmark_3d_68 pose uses) so both backends report the same quantities: in insightface's
frame (x right, y down, z *toward* the camera, i.e. ``R_if = S R S`` with S = diag(1, 1, -1))
R_if = Rz(roll) · Ry(yaw) · Rx(pitch), in degrees:

* yaw > 0: the nose turns toward image right (the subject looks to their left),
* pitch > 0: the face tilts up (the nose moves up in the image),
* roll > 0: the face rotates clockwise as seen in the image.

With five points and a generic face the estimate is coarse on real photos (individual faces
differ from the model by several degrees, and the focal length is a guess); on exact
projections of the model it recovers the angles to a fraction of a degree.

Landmark symmetry
-----------------
The face midline is the line through the eye midpoint and the mouth midpoint. Reflecting
the keypoints across it, a perfectly symmetric face maps its left eye onto its right eye,
its left mouth corner onto its right one and keeps the nose on the line. With ``R`` the
reflection, ``d`` the point-to-line distance and ``h`` the distance from the eye midpoint to
the mouth midpoint (the face's height scale, unaffected by yaw to first order)::

    asymmetry = ( |R(eye_l) - eye_r| / 2 + |R(mouth_l) - mouth_r| / 2 + d(nose, midline) ) / (h / 2)
    symmetry  = clip(1 - asymmetry, 0, 1)

Each term is how far one point sits from where mirror symmetry puts it (half a pair's
mismatch is each member's share), measured in half face heights. On the generic face above,
a frontal view scores 1.0, 15° of yaw about 0.75, 30° about 0.5, 45° about 0.3, 60° about
0.2 (the nose leaves the midline); pitch and roll alone barely change it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from facesets.analyzers.base import ARCFACE_TEMPLATE

# Depth of each keypoint in front of the eyes, in units of the inter-ocular distance, from
# insightface's meanshape_68 (see the module docstring; tests re-derive them).
NOSE_DEPTH_IOD = 0.5341
MOUTH_DEPTH_IOD = 0.1182


def _face5_3d() -> np.ndarray:
    t = ARCFACE_TEMPLATE
    eye_y = (t[0, 1] + t[1, 1]) / 2.0
    eye_dx = (t[1, 0] - t[0, 0]) / 2.0
    mouth_dx = (t[4, 0] - t[3, 0]) / 2.0
    iod = 2.0 * eye_dx
    return np.array(
        [
            [-eye_dx, 0.0, 0.0],
            [eye_dx, 0.0, 0.0],
            [0.0, t[2, 1] - eye_y, -NOSE_DEPTH_IOD * iod],
            [-mouth_dx, (t[3, 1] + t[4, 1]) / 2.0 - eye_y, -MOUTH_DEPTH_IOD * iod],
            [mouth_dx, (t[3, 1] + t[4, 1]) / 2.0 - eye_y, -MOUTH_DEPTH_IOD * iod],
        ],
        dtype=np.float64,
    )


FACE5_3D = _face5_3d()
_FLIP_Z = np.diag([1.0, 1.0, -1.0])


@dataclass(frozen=True)
class Pose:
    pitch: float
    yaw: float
    roll: float


NO_POSE = Pose(math.nan, math.nan, math.nan)


def camera_matrix(width: int, height: int) -> np.ndarray:
    f = float(max(width, height))
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def rotation_from_angles(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """R (model -> camera, OpenCV frame) for angles in degrees, the inverse of ``angles_from_rotation``."""
    a, b, c = np.radians([pitch, yaw, roll])
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    r_if = rz @ ry @ rx
    return _FLIP_Z @ r_if @ _FLIP_Z


def angles_from_rotation(r: np.ndarray) -> Pose:
    """(pitch, yaw, roll) in degrees of an OpenCV-frame rotation, in insightface's convention."""
    m = _FLIP_Z @ np.asarray(r, np.float64) @ _FLIP_Z
    sy = math.hypot(m[0, 0], m[1, 0])
    if sy > 1e-6:
        pitch, yaw, roll = math.atan2(m[2, 1], m[2, 2]), math.atan2(-m[2, 0], sy), math.atan2(m[1, 0], m[0, 0])
    else:
        pitch, yaw, roll = math.atan2(-m[1, 2], m[1, 1]), math.atan2(-m[2, 0], sy), 0.0
    return Pose(*(math.degrees(v) for v in (pitch, yaw, roll)))


def project(r: np.ndarray, t: np.ndarray, width: int, height: int) -> np.ndarray:
    """Image positions (5 x 2) of FACE5_3D under pose (R, t) with the module's camera.

    ``r`` is relative to the line of sight (as ``estimate_pose`` reports it); t places the eye
    midpoint in camera coordinates.
    """
    r = line_of_sight(np.asarray(t, np.float64)) @ np.asarray(r, np.float64)
    rvec, _ = cv2.Rodrigues(r)
    pts, _ = cv2.projectPoints(FACE5_3D, rvec, np.asarray(t, np.float64), camera_matrix(width, height), None)
    return pts.reshape(-1, 2)


def estimate_pose(kps: np.ndarray, width: int, height: int) -> Pose:
    """Head pose from 5 keypoints in a ``width`` x ``height`` image (NaN when it cannot be solved)."""
    pts = np.asarray(kps, np.float64).reshape(5, 2)
    if not np.isfinite(pts).all() or width <= 0 or height <= 0:
        return NO_POSE
    k = camera_matrix(width, height)
    try:
        ok, rvec, tvec = cv2.solvePnP(FACE5_3D, pts, k, None, flags=cv2.SOLVEPNP_SQPNP)
        if not ok:
            return NO_POSE
        rvec, tvec = cv2.solvePnPRefineLM(FACE5_3D, pts, k, None, rvec, tvec)
    except cv2.error:
        return NO_POSE
    if tvec[2, 0] <= 0:  # behind the camera: no physical solution
        return NO_POSE
    r, _ = cv2.Rodrigues(rvec)
    return angles_from_rotation(line_of_sight(tvec.reshape(3)).T @ r)


def line_of_sight(t: np.ndarray) -> np.ndarray:
    """V: the smallest rotation taking the optical axis (0, 0, 1) to the direction of ``t``."""
    d = np.asarray(t, np.float64) / np.linalg.norm(t)
    axis = np.cross([0.0, 0.0, 1.0], d)
    s = float(np.linalg.norm(axis))
    if s < 1e-12:
        return np.eye(3)
    angle = math.atan2(s, float(d[2]))
    rvec = axis / s * angle
    v, _ = cv2.Rodrigues(rvec)
    return v


def symmetry(kps: np.ndarray) -> float:
    """Landmark symmetry in [0, 1] (1 = mirror-symmetric about the midline); NaN if degenerate."""
    p = np.asarray(kps, np.float64).reshape(5, 2)
    eye_l, eye_r, nose, mouth_l, mouth_r = p
    eye_mid, mouth_mid = (eye_l + eye_r) / 2.0, (mouth_l + mouth_r) / 2.0
    axis = mouth_mid - eye_mid
    h = float(np.linalg.norm(axis))
    if not np.isfinite(h) or h < 1e-6:
        return math.nan
    u = axis / h
    c = (eye_mid + mouth_mid) / 2.0

    def reflect(q: np.ndarray) -> np.ndarray:
        v = q - c
        return c + 2.0 * (v @ u) * u - v

    v = nose - c
    d_nose = float(np.linalg.norm(v - (v @ u) * u))
    asym = (
        float(np.linalg.norm(reflect(eye_l) - eye_r)) / 2.0
        + float(np.linalg.norm(reflect(mouth_l) - mouth_r)) / 2.0
        + d_nose
    ) / (h / 2.0)
    return float(min(1.0, max(0.0, 1.0 - asym)))


def face_short(x1: float, y1: float, x2: float, y2: float) -> float:
    """Short edge of a face box (original oriented pixels)."""
    return float(min(x2 - x1, y2 - y1))
