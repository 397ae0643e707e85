"""Reproduce the SFace calibration tables of docs/thresholds.md on dev-faces.

python benchmarks/calibrate_thresholds.py [--dev-faces ../shared/datasets/dev-faces]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from facesets import schema
from facesets.analyzers import create_analyzer
from facesets.clustering import cluster_faces, normalize
from facesets.config import load_schema, validate
from facesets.embed import EmbedOptions, embed_listing
from facesets.listing import stage_source
from facesets.metrics import pairwise_prf
from facesets.options import build
from facesets.store import FaceStore


def labelled_faces(dev: Path, model_dir: Path) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    settings = validate({}, load_schema("config")["properties"]["embed"], "calibration")
    analyzer = create_analyzer("opencv", settings, model_dir=model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        listing = stage_source("dev", dev, ["**/*.jpg", "**/*.jpeg", "**/*.png"], [], Path(tmp) / "l.parquet")
        out = Path(tmp) / "faces.parquet"
        embed_listing(
            listing,
            analyzer,
            FaceStore(Path(tmp) / "store", analyzer.model_id),
            build(EmbedOptions, "embed"),
            out,
            True,
        )
        faces = schema.read_table(out)
    names, emb, keys, photos = [], [], [], []
    for row in pd.read_csv(dev / "labels.csv").itertuples():
        path = str(dev.resolve() / row.path)
        f = faces[(faces.path == path) & (faces.det_score >= 0.8)].sort_values("x1")
        for fr, name in zip(f.itertuples(), row.faces_left_to_right.split(";"), strict=False):
            if name != "bystander":
                names.append(name)
                emb.append(fr.embedding)
                keys.append(fr.face_key)
                photos.append(fr.sha256)
    return np.array(names), normalize(np.stack(emb)), keys, photos


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dev-faces", default="../shared/datasets/dev-faces")
    ap.add_argument("--model-dir", default="work/models")
    a = ap.parse_args()
    names, e, keys, photos = labelled_faces(Path(a.dev_faces), Path(a.model_dir))
    d = 1 - e @ e.T
    iu = np.triu_indices(len(e), 1)
    same = (names[:, None] == names[None, :])[iu]
    print(f"{len(e)} faces, {len(set(names))} people, {same.sum()} same pairs, {(~same).sum()} different pairs")
    print("same face-face min/p5/p50/p95/max", np.round(np.percentile(d[iu][same], [0, 5, 50, 95, 100]), 3))
    print("diff face-face min/p1/p5/p50", np.round(np.percentile(d[iu][~same], [0, 1, 5, 50]), 3))
    multi = [n for n in sorted(set(names)) if (names == n).sum() > 1]
    own, other = [], []
    for i in range(len(e)):
        if (names == names[i]).sum() > 1:
            m = names == names[i]
            m[i] = False
            own.append(1 - e[i] @ normalize(e[m].mean(0)))
        other += [1 - e[i] @ normalize(e[names == n].mean(0)) for n in multi if n != names[i]]
    print("face->own centroid (LOO) p50/p95/max", np.round(np.percentile(own, [50, 95, 100]), 3))
    print("face->other centroid min/p5", np.round(np.percentile(other, [0, 5]), 3))
    c = normalize(np.stack([e[names == n].mean(0) for n in multi]))
    print("centroid-centroid (different) min", round(float((1 - c @ c.T)[np.triu_indices(len(c), 1)].min()), 3))
    for t in (0.45, 0.5, 0.52, 0.55, 0.6, 0.65, 0.7):
        p, r, f = pairwise_prf(names, cluster_faces(keys, e, photos, t).labels)
        print(f"cut {t:.2f}: pairwise precision {p:.3f} recall {r:.3f} F {f:.3f}")


if __name__ == "__main__":
    main()
