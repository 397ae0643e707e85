"""The per-row ``build_tables`` that embed used before it was vectorised (issue #18).

Kept as the reference the vectorised ``facesets.embed.build_tables`` is checked against
(tests/stage/test_embed_tables.py) and timed against (benchmarks/bench_build_tables.py), and
``synthetic_tables`` makes a listing + store rows shaped like a real library's.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa

from facesets import schema


def _null(v: object) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA


def build_tables_rowwise(listing: pd.DataFrame, results: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Join listing rows with analyzer results into (faces, images) tables, sorted by path."""
    by_sha = {sha: g for sha, g in results.groupby("sha256", sort=False)} if len(results) else {}
    faces, images = [], []
    for r in listing.itertuples(index=False):
        aliases = list(r.aliases) if r.aliases is not None else []
        base = {"source": r.source, "sha256": r.sha256, "path": r.path, "relpath": r.relpath, "aliases": aliases}
        img = {
            **base,
            "orientation": r.orientation,
            "capture_time": r.capture_time,
            "img_width": r.width,
            "img_height": r.height,
        }
        g = by_sha.get(r.sha256) if not _null(r.sha256) else None
        if not _null(r.error) or g is None:
            reason = r.error if not _null(r.error) else "not analyzed"
            images.append({**img, "status": "error", "error": reason, "n_faces": 0, "model_id": None})
            continue
        first = g.iloc[0]
        img.update(img_width=first["img_width"], img_height=first["img_height"], model_id=first["model_id"])
        if first["status"] != "faces":
            err = None if _null(first["error"]) else first["error"]
            images.append({**img, "status": first["status"], "error": err, "n_faces": 0})
            continue
        g = g.sort_values("face_index")
        images.append({**img, "status": "faces", "error": None, "n_faces": len(g)})
        for f in g.itertuples(index=False):
            faces.append(
                {
                    **base,
                    "face_key": schema.face_key(r.sha256, int(f.face_index)),
                    "face_index": f.face_index,
                    "img_width": f.img_width,
                    "img_height": f.img_height,
                    "x1": f.x1,
                    "y1": f.y1,
                    "x2": f.x2,
                    "y2": f.y2,
                    "kps": f.kps,
                    "det_score": f.det_score,
                    "embedding": f.embedding,
                    "model_id": f.model_id,
                }
            )
    faces_df = pd.DataFrame(faces, columns=schema.FACES.names)
    images_df = pd.DataFrame(images, columns=schema.IMAGES.names)
    if len(faces_df):
        faces_df = faces_df.sort_values(["path", "face_index"], kind="stable").reset_index(drop=True)
    images_df = images_df.sort_values("path", kind="stable").reset_index(drop=True)
    return faces_df, images_df


def synthetic_tables(n: int, seed: int = 0, analyzed: float = 1.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(listing, store rows) for ``n`` files: faces (1-4), noface, stored errors, listing errors,
    aliases, and a share ``1 - analyzed`` not in the store; dtypes as read back from Parquet."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice(["faces", "noface", "error", "listing_error"], size=n, p=[0.8, 0.1, 0.05, 0.05])
    listing, store = [], []
    for i, kind in enumerate(kinds):
        sha = None if kind == "listing_error" else f"{i:064x}"
        listing.append(
            {
                "source": "s",
                "sha256": sha,
                "path": f"/lib/{rng.integers(1e9):09d}_{i}.jpg",
                "relpath": f"{i}.jpg",
                "aliases": [f"/lib/dup/{i}.jpg"] if i % 17 == 0 else [],
                "size": 1000 + i,
                "mtime_ns": i,
                "width": None if kind == "listing_error" else 4000,
                "height": None if kind == "listing_error" else 3000,
                "orientation": None if kind == "listing_error" else 1,
                "capture_time": None,
                "error": "permission denied" if kind == "listing_error" else None,
            }
        )
        if sha is None or rng.random() >= analyzed:
            continue
        base = {"sha256": sha, "img_width": 4000, "img_height": 3000, "model_id": "m"}
        if kind == "faces":
            for f in range(int(rng.integers(1, 5))):
                store.append(
                    {
                        **base,
                        "status": "faces",
                        "error": None,
                        "face_index": f,
                        "x1": 10.0 * f,
                        "y1": 1.0,
                        "x2": 10.0 * f + 50,
                        "y2": 60.0,
                        "kps": rng.random(10, dtype=np.float32),
                        "det_score": 0.9,
                        "embedding": rng.random(128, dtype=np.float32),
                    }
                )
        else:
            err = "truncated or corrupt image data" if kind == "error" else None
            w = None if kind == "error" else 4000
            store.append({**base, "status": kind, "error": err, "face_index": -1, "img_width": w, "img_height": w})
    lst = pa.Table.from_pandas(schema.conform(pd.DataFrame(listing), schema.LISTING), schema=schema.LISTING)
    res = pa.Table.from_pandas(schema.conform(pd.DataFrame(store), schema.STORE), schema=schema.STORE)
    return lst.to_pandas(), res.to_pandas()
