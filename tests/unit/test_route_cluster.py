"""`route` discovers new identities with refine's pipeline under the user's `cluster` section
(issue #16: it used refine's own exact_max of 20,000 and ignored the section)."""

from __future__ import annotations

import numpy as np
import pytest

from facesets import refine
from facesets.library import route_manifest
from facesets.options import section
from facesets.thresholds import SFACE
from tests.unit.test_library import MODEL, _faces


@pytest.fixture
def engine_calls(monkeypatch):
    calls = []
    real = refine.cluster_faces

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(refine, "cluster_faces", spy)
    return calls


def _mixed():
    faces = _faces([(f"p{i}.jpg", 0, i % 2, 150.0) for i in range(12)])
    faces["det_score"] = 0.9
    return faces


def test_route_discovery_honours_the_cluster_section(engine_calls):
    cluster = {"method": "exact", "exact_max": 1234, "knn": 7}
    route_manifest(_mixed(), None, [], SFACE, {"min_faces": 2, "min_blur": 0}, "mixed", MODEL, cluster)
    assert engine_calls and engine_calls[-1]["method"] == "exact"
    assert engine_calls[-1]["exact_max"] == 1234 and engine_calls[-1]["k"] == 7


def test_route_and_refine_default_to_the_schema_engine_settings(engine_calls):
    route_manifest(_mixed(), None, [], SFACE, {"min_faces": 2}, "mixed", MODEL)
    schema = section("cluster")
    assert engine_calls[-1]["exact_max"] == schema["exact_max"] == 30000  # not refine's old 20,000
    assert engine_calls[-1]["k"] == schema["knn"] and engine_calls[-1]["method"] == schema["method"]
    opts = refine.resolve_options({}, SFACE)
    assert (opts.method, opts.exact_max, opts.knn) == (schema["method"], schema["exact_max"], schema["knn"])
    assert np.isfinite(opts.cluster_threshold)
