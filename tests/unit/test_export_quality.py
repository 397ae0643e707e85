"""The composite quality score: each component's normalisation, the weights, the fallbacks."""

import numpy as np
import pandas as pd
import pytest

from facesets import thresholds
from facesets.export import resolve_options
from facesets.options import section
from facesets.quality import (
    COMPONENTS,
    Norms,
    composite_score,
    det_component,
    frontality,
    kps_yaw,
    norms_for,
    quality_components,
    sharpness_component,
    size_component,
)

N = Norms()


def test_frontality_is_one_facing_the_camera_and_zero_in_profile():
    f = frontality(np.array([0, 45, -45, 90, 30, 0]), np.array([0, 0, 0, 0, 40, np.nan]), N)
    assert f.tolist() == pytest.approx([1.0, 0.5, 0.5, 0.0, 1 - 50 / 90, 1.0])  # hypot(30, 40) = 50
    assert frontality(np.array([120.0]), np.array([0.0]), N)[0] == 0.0  # clipped


def test_yaw_from_keypoints_has_the_right_sign_and_size():
    eyes = [[40, 50], [80, 50]]
    mouth = [[45, 90], [75, 90]]
    centred = np.array([*eyes, [60, 70], *mouth], float).reshape(1, 10)
    turned = np.array([*eyes, [78.8, 70], *mouth], float).reshape(1, 10)  # nose 0.94 half-eye-distances right
    assert kps_yaw(centred)[0] == pytest.approx(0.0)
    assert kps_yaw(turned)[0] == pytest.approx(45.0, abs=0.5)
    mirrored = turned.copy()
    mirrored[0, 4] = 60 - 18.8
    assert kps_yaw(mirrored)[0] == pytest.approx(-45.0, abs=0.5)


def test_det_size_and_sharpness_normalisations():
    assert det_component(np.array([0.3, 0.5, 0.75, 1.0]), N).tolist() == pytest.approx([0, 0, 0.5, 1])
    n = norms_for(512, 0.5)
    assert n.full_face == 256  # 512 px crop, face = half of it at pad 0.5
    assert size_component(np.array([64, 128, 256, 1000]), n).tolist() == pytest.approx([0.25, 0.5, 1, 1])
    mid = np.sqrt(N.blur_lo * N.blur_hi)  # log scale: the geometric mean is halfway
    s = sharpness_component(np.array([1.0, N.blur_lo, mid, N.blur_hi, 1e6]), N)
    assert s.tolist() == pytest.approx([0, 0, 0.5, 1, 1])


def _faces(n=3):
    kps = np.array([40, 50, 80, 50, 60, 70, 45, 90, 75, 90], np.float32)
    return pd.DataFrame({"face_key": [f"k{i}" for i in range(n)], "kps": [kps] * n})


def test_components_from_a_quality_table_and_the_weighted_sum():
    faces = _faces()
    q = pd.DataFrame(
        {
            "face_short": [256.0, 128.0, 64.0],
            "blur": [N.blur_hi, N.blur_lo, np.nan],
            "det_score": [1.0, 0.75, 0.5],
            "symmetry": [1.0, 0.5, 0.0],
            "yaw": [0.0, 45.0, np.nan],  # no pose: the keypoints' yaw (0 here) is used
            "pitch": [0.0, 0.0, np.nan],
        }
    )
    c = quality_components(faces, q, N)
    assert list(c.columns) == list(COMPONENTS)
    assert c.loc["k0"].tolist() == pytest.approx([1, 1, 1, 1, 1])
    assert c.loc["k1"].tolist() == pytest.approx([0.5, 0.5, 0.5, 0.5, 0.0])
    assert c.loc["k2"].tolist() == pytest.approx([1.0, 0.0, 0.0, 0.25, N.neutral])  # unknown blur: neutral
    w = section("export")["weights"]
    score = composite_score(c, w)
    assert score[0] == pytest.approx(1.0)
    assert score[1] == pytest.approx(0.30 * 0.5 + 0.20 * 0.5 + 0.20 * 0.5 + 0.15 * 0.5 + 0.15 * 0.0)
    assert ((score >= 0) & (score <= 1)).all()


def test_options_from_the_model_profile_and_weight_validation():
    o = resolve_options({}, thresholds.SFACE)
    assert (o.outlier_tight, o.candidate_distance) == (thresholds.SFACE.outlier_tight, thresholds.SFACE.cluster)
    o = resolve_options({}, thresholds.ARCFACE)
    assert (o.outlier_tight, o.candidate_distance) == (0.45, 0.55)  # the seed's numbers
    assert (o.min_face_short, o.pad_ratio, o.out_size, o.top_n, o.candidate_min_score) == (100, 0.5, 512, 30, 0.40)
    assert resolve_options({"outlier_tight": 0.3}, thresholds.ARCFACE).outlier_tight == 0.3
    with pytest.raises(ValueError, match="sum to 1"):
        resolve_options({"weights": {"frontality": 0.9}}, thresholds.ARCFACE)
    with pytest.raises(ValueError, match="pad_ratio"):
        resolve_options({"pad_ratio": -1}, thresholds.ARCFACE)


def test_cli_errors_name_the_file_and_exit_2(tmp_path, capsys):
    from facesets import schema
    from facesets.cli import main

    cache = tmp_path / "faces.parquet"
    schema.write_table(pd.DataFrame(columns=schema.FACES.names), schema.FACES, cache)
    ref = tmp_path / "refine_manifest.json"
    ref.write_text('{"version": 1, "facesets": []}')
    capsys.readouterr()
    assert main(["export-swap", str(cache), str(tmp_path / "nope.json"), str(tmp_path / "out")]) == 2
    assert "nope.json" in capsys.readouterr().err
    assert main(["export-swap", str(cache), str(ref), str(tmp_path / "out"), "--candidates"]) == 2
    assert "--raw-manifest" in capsys.readouterr().err
    assert main(["export-swap", str(tmp_path / "none.parquet"), str(ref), str(tmp_path / "out")]) == 2
    assert "none.parquet" in capsys.readouterr().err
    assert main(["export-swap", str(cache), str(ref), str(tmp_path / "out"), "--no-candidates"]) == 2
    assert "--backend" in capsys.readouterr().err  # an empty table names no model: say which detector
    assert not (tmp_path / "out").exists()
