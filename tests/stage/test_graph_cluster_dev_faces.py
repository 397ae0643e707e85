"""Graph-context clustering on real photos (../shared/datasets/dev-faces, SFace embeddings):
every labelled person found whole and alone, group photos never merged (cannot-link), the
same labels twice. Skipped with a message when the dataset is absent."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from facesets import graph_cluster as gc
from facesets import thresholds
from facesets.clustering import group_ids
from facesets.embed import EmbedOptions, analyze_image
from facesets.metrics import pairwise_prf
from facesets.options import build

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dev_set(dev_faces, opencv_analyzer):
    """One row per detected face of each distinct photo, with its label ('' = unlabelled)."""
    labels = pd.read_csv(dev_faces / "labels.csv")
    keys, emb, photo, truth, seen = [], [], [], [], set()
    for row in labels.itertuples():
        path = dev_faces / row.path
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        if sha in seen:
            continue  # byte-identical copy: the same photo to the workflow
        seen.add(sha)
        faces = [
            f
            for f in analyze_image(str(path), sha, opencv_analyzer, build(EmbedOptions, "embed"))[0]
            if f["status"] == "faces"
        ]
        names = row.faces_left_to_right.split(";")
        size = np.array([(f["x2"] - f["x1"]) * (f["y2"] - f["y1"]) for f in faces])
        chosen = sorted(np.argsort(-size, kind="stable")[: len(names)].tolist())  # labelled = the largest
        lab = [""] * len(faces)
        for i, name in zip(chosen, names, strict=False):
            lab[i] = f"bystander-{sha[:8]}-{i}" if name == "bystander" else name
        for f, name in zip(faces, lab, strict=True):
            keys.append(f"{sha[:16]}-{f['face_index']}")
            emb.append(f["embedding"])
            photo.append(sha)
            truth.append(name)
    return np.array(keys), np.stack(emb), np.array(photo), np.array(truth), opencv_analyzer.model_id


def test_context_on_dev_faces(dev_set):
    keys, emb, photo, truth, model_id = dev_set
    t = thresholds.for_model(model_id).cluster
    a = gc.cluster(keys, emb, photo, t, method="context").labels
    b = gc.cluster(keys, emb, photo, t, method="context").labels
    assert np.array_equal(a, b)
    _, counts = np.unique(np.stack([group_ids(photo), a], 1), axis=0, return_counts=True)
    assert counts.max() == 1, "two faces of one photo in one cluster"
    scored = truth != ""
    assert len(set(truth[scored])) >= 10
    p, r, _ = pairwise_prf(truth[scored], a[scored])
    p_h, r_h, _ = pairwise_prf(truth[scored], gc.cluster(keys, emb, photo, t, method="auto").labels[scored])
    assert p == 1.0, "a stranger was put with a labelled person"
    assert p >= p_h and r >= r_h
    assert r == 1.0  # dev-faces' people (obama across photos and resolutions, biden, kit, rose...) are found whole


def test_flip_tta_has_its_own_store_key(dev_faces, model_dir, opencv_analyzer):
    # flip TTA changes embeddings, so it must change the model id (the face-store key); off, the
    # id is the default analyzer's, so existing stores stay valid
    from facesets.analyzers.opencv import OpenCVAnalyzer
    from facesets.models import ensure_opencv_models

    paths = ensure_opencv_models(model_dir)
    det, rec = paths["face_detection_yunet_2023mar.onnx"], paths["face_recognition_sface_2021dec.onnx"]
    off, on = OpenCVAnalyzer(det, rec), OpenCVAnalyzer(det, rec, flip_tta=True)
    assert off.model_id == opencv_analyzer.model_id
    assert on.model_id != off.model_id and on.model_id.startswith("opencv-yunet-sface")
    path = dev_faces / "train" / "biden" / "biden2.jpg"
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    opts = build(EmbedOptions, "embed")
    a = next(f for f in analyze_image(str(path), sha, off, opts)[0] if f["status"] == "faces")["embedding"]
    b = next(f for f in analyze_image(str(path), sha, on, opts)[0] if f["status"] == "faces")["embedding"]
    assert abs(float(np.linalg.norm(b)) - 1.0) < 1e-5
    assert 0.8 < float(a @ b) < 0.99999  # the same face, a different vector
