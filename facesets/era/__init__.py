"""Era split: one curated identity -> eras ``<identity>_era<k>`` (a child growing up, decades of photos).

docs/eras.md describes the method and the files; in short, for one identity:

1. **Seed**: the centroid of the curated identity (``MANIFEST#NAME``: a refine/export manifest
   entry, or the identity ledger's per-model centroid).
2. **Wide recovery**: every face of the given face tables (the sources) within ``recover``
   of the seed centroid.
3. **Quality gates**: ``min_short``, ``min_blur``, ``min_det_score``, refine's gate function
   (quality tables when given; without them the face table's box and score, no blur gate).
4. **Re-centroid + tighten**: faces within ``tighten`` of the centroid of what was recovered;
   then one face per photo (the one nearest that centroid: a person appears once in a photo).
5. **Sub-clusters**: average linkage at ``subcluster`` with cannot-link (facesets.clustering).
6. **Anchors and fragments**: sub-clusters with at least ``min_era_faces`` faces are anchors.
   A fragment joins the single nearest anchor (centroid to centroid) only if that distance is
   at most ``attach`` *and* their dominant EXIF years differ by at most ``year_window``;
   otherwise it stands alone as an era of its own. Every decision is made against the
   anchors as formed (not as they grow), so the result does not depend on any order.
7. **Eras**, ordered by dominant year (unknown last), then size: ``<identity>_era1``, ...;
   eras under ``min_era_faces`` faces are THIN.

Everything but file reading is a pure function of (faces, quality, years, seed, settings), so
the result does not depend on the row order of the inputs. EXIF years come from the quality
tables (enrich's ``exif_year``) or are read with enrich's reader and cached by sha256 in
immutable segments under the work root, so a re-run reads no photo. ``--export`` exports each
era with export-swap's code (facesets.export).

One concept per module: ``settings`` (EraSettings), ``seed`` (the curated identity's centroid),
``readers`` (face/quality tables, EXIF years), ``algorithm`` (the split), ``export`` (the export
adapter); rules/common.smk builds what rules/era.smk passes; the command line is facesets/cli/era.py.
"""

from __future__ import annotations

from facesets.era.algorithm import (
    HIST_EDGES,
    MANIFEST_VERSION,
    EraDraft,
    Prepared,
    build_eras,
    distance_histogram,
    dominant_year,
    era_sort_key,
    prepare,
    probe_identity,
    probe_report,
    split_identity,
    split_subclusters,
    year_counts,
)
from facesets.era.export import export_eras, member_faces
from facesets.era.readers import (
    YEAR_CACHE_SCHEMA,
    YearCache,
    load_faces,
    load_quality,
    model_of,
    read_exif_year,
    resolve_years,
)
from facesets.era.seed import Seed, load_seed, seed_digest
from facesets.era.settings import EraSettings, resolve_settings
from facesets.manifests import EXPORT_MANIFEST, THIN_MARKER

__all__ = [
    "EXPORT_MANIFEST",
    "HIST_EDGES",
    "MANIFEST_VERSION",
    "THIN_MARKER",
    "YEAR_CACHE_SCHEMA",
    "EraDraft",
    "EraSettings",
    "Prepared",
    "Seed",
    "YearCache",
    "build_eras",
    "distance_histogram",
    "dominant_year",
    "era_sort_key",
    "export_eras",
    "load_faces",
    "load_quality",
    "load_seed",
    "member_faces",
    "model_of",
    "prepare",
    "probe_identity",
    "probe_report",
    "read_exif_year",
    "resolve_settings",
    "resolve_years",
    "seed_digest",
    "split_identity",
    "split_subclusters",
    "year_counts",
]
