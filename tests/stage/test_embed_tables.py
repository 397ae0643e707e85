"""embed's tables (issues #18, #11): the vectorised ``build_tables`` gives exactly what the
per-row version gave; the summary names the files behind each error reason."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pytest

from facesets import schema
from facesets.embed import build_tables, sidecar_paths
from facesets.summary import format_summary, summarize
from tests.support.reference_tables import build_tables_rowwise, synthetic_tables


def _arrow(df, sch) -> pa.Table:
    return pa.Table.from_pandas(schema.conform(df.copy(), sch), schema=sch, preserve_index=False)


@pytest.mark.parametrize(("seed", "analyzed"), [(0, 1.0), (1, 0.7), (2, 0.0)])
def test_vectorised_build_tables_equals_the_per_row_version(seed, analyzed):
    listing, results = synthetic_tables(600, seed=seed, analyzed=analyzed)
    faces, images = build_tables(listing, results)
    ref_faces, ref_images = build_tables_rowwise(listing, results)
    assert _arrow(images, schema.IMAGES).equals(_arrow(ref_images, schema.IMAGES))
    assert _arrow(faces, schema.FACES).equals(_arrow(ref_faces, schema.FACES))
    assert len(images) == 600 and (analyzed == 0.0) == (len(faces) == 0)


def test_a_store_row_wins_over_an_unstored_one_for_the_same_photo():
    listing, results = synthetic_tables(50, seed=3)
    sha = results.loc[results["status"] == "faces", "sha256"].iloc[0]
    extra = results.iloc[:1].copy().assign(sha256=sha, status="error", error="file not found (not stored)")
    _, images = build_tables(listing, pd.concat([results, extra], ignore_index=True))
    assert images.loc[images["sha256"] == sha, "status"].item() == "faces"


def test_summary_names_the_files_of_each_error(tmp_path):
    listing, results = synthetic_tables(200, seed=4)
    faces, images = build_tables(listing, results)
    out = tmp_path / "faces.parquet"
    schema.write_table(faces, schema.FACES, out)
    images_out, stats_out = sidecar_paths(out)
    schema.write_table(images, schema.IMAGES, images_out)
    stats_out.write_text(json.dumps({"analyzed": 0, "seconds": 0.0, "img_per_s": 0.0, "finished": "then"}))
    text = format_summary(summarize([out]))
    denied = images[images["error"] == "permission denied"].sort_values("path")["path"].tolist()
    assert len(denied) > 3
    line = next(ln for ln in text.splitlines() if "permission denied" in ln)
    assert line.startswith(f"    error x{len(denied)}: permission denied: {denied[0]}, {denied[1]}, {denied[2]}")
    assert line.endswith(f"and {len(denied) - 3} more")
    assert "0 analyzed by the last embed (then)" in text
