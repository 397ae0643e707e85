"""`cluster.method: context` (facesets/graph_cluster.py) reaches the cluster and refine stages."""

from __future__ import annotations

import numpy as np
import pandas as pd

from facesets.options import build
from facesets.rawclusters import ClusterOptions, cluster_table


def _faces(n_people: int = 6, per: int = 8, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_people, 32))
    rows = []
    for p in range(n_people):
        for i in range(per):
            v = centers[p] + rng.normal(scale=0.35, size=32)
            rows.append({"face_key": f"{p:02d}{i:02d}" + "0" * 60 + "_0", "sha256": f"{p}-{i}", "embedding": v / np.linalg.norm(v)})
    return pd.DataFrame(rows)


def test_every_method_of_the_schema_runs_through_cluster_table():
    """Before the wiring, `context` (allowed by the schema) stopped with "unknown method"."""
    faces = _faces()
    truth = faces["face_key"].str[:2].to_numpy()
    for method in ("auto", "exact", "graph", "context"):
        opts = build(ClusterOptions, "cluster", {"method": method, "threshold": 0.55})
        out = cluster_table(faces, opts)
        got = out["cluster_index"].to_numpy()
        # well-separated people: every method finds exactly them
        assert len(set(zip(truth, got, strict=True))) == len(set(truth)) == len(set(got)), method
