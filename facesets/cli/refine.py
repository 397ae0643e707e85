"""``facesets refine``: face sets of a `folder` source (rules/refine.smk)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from facesets.cli.common import section_settings


def cmd_refine(args: argparse.Namespace) -> int:
    from facesets.refine import run_refine

    flags = (
        "cluster_threshold",
        "merge_threshold",
        "outlier_threshold",
        "outlier_min_size",
        "min_short",
        "min_blur",
        "min_det_score",
        "min_faces",
        "link_mode",
    )
    settings = section_settings(args, "refine", flags)
    cluster = section_settings(args, "cluster", ())  # the engine's method/exact_max/knn
    quality = Path(args.quality) if args.quality else None
    manifest = run_refine(Path(args.faces), Path(args.out), settings, quality, cluster)
    print(json.dumps(manifest["stats"]))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("refine", help="face sets from a face table: faceset_NNN/ + refine_manifest.json")
    r.add_argument("faces", help="face table (.parquet) from `facesets embed`")
    r.add_argument("out", help="output folder (replaced atomically)")
    r.add_argument("--quality", help="quality table from `facesets enrich` (without it: no blur gate)")
    r.add_argument("--configfile", action="append", help="take the refine/cluster settings from this config.yaml")
    r.add_argument("--refine-settings", help="JSON object for the `refine` config section")
    r.add_argument("--cluster-settings", help="JSON object for the `cluster` config section (engine method)")
    r.add_argument("--cluster-threshold", type=float, help="initial average-linkage cut (default: model profile)")
    r.add_argument("--merge-threshold", type=float, help="centroid merge distance (default: model profile)")
    r.add_argument("--outlier-threshold", type=float, help="face-to-centroid outlier distance (default: profile)")
    r.add_argument("--outlier-min-size", type=int)
    r.add_argument("--min-short", type=float)
    r.add_argument("--min-blur", type=float)
    r.add_argument("--min-det-score", type=float)
    r.add_argument("--min-faces", type=int, help="unique photos a face set needs")
    r.add_argument("--link-mode", choices=["hardlink", "symlink", "copy"])
    r.set_defaults(func=cmd_refine)
