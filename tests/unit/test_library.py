"""Source kinds `identities` and `mixed`: asserted identities, routing, known identities."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from facesets import ledger as L
from facesets.library import (
    KnownIdentity,
    asserted_identity,
    identities_manifest,
    known_identities,
    route_faces,
    safe_label,
)
from facesets.thresholds import SFACE

MODEL = "opencv-yunet-sface-2021dec-test"
DIM = 32


def _vec(axis: int, seed: int, noise: float = 0.08) -> np.ndarray:
    v = np.zeros(DIM)
    v[axis] = 1.0
    v += noise * np.random.default_rng(seed).normal(size=DIM)
    return v / np.linalg.norm(v)


def _faces(rows: list[tuple[str, int, int, float]]) -> pd.DataFrame:
    """rows: (relpath, face_index, identity axis, face width)."""
    out = []
    for i, (rel, idx, ax, w) in enumerate(rows):
        sha = rel.replace("/", "_").ljust(64, "0")
        out.append(
            {
                "face_key": f"{sha}_{idx}",
                "sha256": sha,
                "path": f"/photos/{rel}",
                "relpath": rel,
                "x1": 100.0 * idx,
                "y1": 0.0,
                "x2": 100.0 * idx + w,
                "y2": w,
                "embedding": _vec(ax, i),
                "model_id": MODEL,
            }
        )
    return pd.DataFrame(out)


def test_safe_label():
    assert safe_label("Émile Zola") == "Emile_Zola"
    assert safe_label("../..") == "identity"
    assert safe_label("a/b\\c") == "a_b_c"


def test_bystanders_in_group_photos_drop_out():
    # alice's folder: 4 solo photos and 2 group photos where a bigger stranger stands beside her
    rows = [(f"alice/solo{i}.jpg", 0, 0, 120) for i in range(4)]
    rows += [(f"alice/group{i}.jpg", 0, 5, 200) for i in range(2)]
    rows += [(f"alice/group{i}.jpg", 1, 0, 90) for i in range(2)]
    faces = _faces(rows)
    keep = asserted_identity(faces, SFACE)
    kept = faces[keep]
    assert len(kept) == 6 and kept["sha256"].is_unique
    assert set(kept.loc[kept["relpath"].str.contains("group"), "face_key"].str[-1]) == {"1"}


def test_single_photo_folder_keeps_its_largest_face():
    faces = _faces([("bob/only.jpg", 0, 1, 80), ("bob/only.jpg", 1, 2, 150)])
    keep = asserted_identity(faces, SFACE)
    assert faces[keep]["face_key"].str[-1].tolist() == ["1"]


def test_identities_manifest_one_entry_per_folder():
    rows = [(f"carol/{i}.jpg", 0, 0, 100) for i in range(3)]
    rows += [(f"Dave Smith/{i}.jpg", 0, 1, 100) for i in range(2)]
    rows += [("loose.jpg", 0, 2, 100)]
    m = identities_manifest(_faces(rows), SFACE, "sorted")
    assert [e["name"] for e in m["facesets"]] == ["Dave_Smith", "carol"]
    dave = m["facesets"][0]
    assert dave["label"] == "Dave Smith" and dave["kind"] == "identities" and dave["marker"] == "Dave_Smith.txt"
    assert dave["faces"] == 2 and len(dave["centroid"]) == DIM
    assert m["stats"]["root_faces"] == 1


def test_routing_one_face_per_photo_and_identity():
    faces = _faces([("g/1.jpg", 0, 0, 100), ("g/1.jpg", 1, 1, 100), ("g/2.jpg", 0, 0, 100), ("g/3.jpg", 0, 9, 100)])
    known = [KnownIdentity("ledger:alice", _vec(0, 99, 0)), KnownIdentity("s/bob", _vec(1, 98, 0))]
    assert route_faces(faces, known, SFACE.match).tolist() == [0, 1, 0, -1]
    twins = _faces([("t/1.jpg", 0, 0, 100), ("t/1.jpg", 1, 0, 100)])
    assert sorted(route_faces(twins, known, SFACE.match).tolist()) == [-1, 0]


def test_known_identities_from_ledger_and_earlier_sources(tmp_path):
    led = L.Ledger()
    p = L.Proposal(
        "s",
        "faceset_001",
        "discovered",
        MODEL,
        _vec(3, 0),
        [{"face_key": "k_0", "sha256": "k", "score": 1.0, "file": "/x.png"}],
    )
    L.apply(led, p, None, {"k_0": _vec(3, 1)})
    era = L.Identity(
        number=9, name="x_era1", kind="era", centroid_sum={MODEL: list(_vec(4, 0))}, centroid_count={MODEL: 1}
    )
    led.identities.append(era)
    L.save(led, tmp_path / "ledger.json")
    refine = tmp_path / "refine_manifest.json"
    refine.write_text(
        json.dumps(
            {
                "version": 1,
                "model_id": MODEL,
                "facesets": [
                    {"name": "alice", "kind": "identities", "centroid": list(_vec(0, 0))},
                    {"name": "to_x", "kind": "routed", "centroid": list(_vec(0, 0))},
                ],
            }
        )
    )
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"version": 1, "model_id": "insightface-x", "facesets": [{"name": "a", "centroid": [1.0]}]}))
    known = known_identities(tmp_path / "ledger.json", [("sorted", refine), ("old", other)], MODEL)
    assert [k.ref for k in known] == ["ledger:faceset_001", "sorted/alice"]
    assert known_identities(tmp_path / "missing.json", [], MODEL) == []
