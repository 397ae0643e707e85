"""``facesets dedup``: duplicate photo groups (rules/dedup.smk)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from facesets.cli.common import beside, section_settings


def cmd_dedup(args: argparse.Namespace) -> int:
    from facesets.dedup import dedup_options, run_dedup

    s = section_settings(
        args, "dedup", ("workers", "phash_distance", "face_distance", "min_overlap", "min_ncc", "min_cell_ncc", "crops")
    )
    opts = dedup_options(s)
    faces_path = Path(args.faces)
    stats = run_dedup(
        faces_path,
        Path(args.out) if args.out else beside(args.faces, "duplicates.json"),
        Path(args.cache_dir) if args.cache_dir else faces_path.parent / "cache" / "dedup",
        opts,
        listing_path=Path(args.listing) if args.listing else None,
    )
    print(json.dumps(stats.__dict__))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    dd = sub.add_parser("dedup", help="byte-identical and visual near-duplicate photo groups (-> duplicates.json)")
    dd.add_argument("faces", help="face table (.parquet); the listing beside it is read too")
    dd.add_argument("--out", help="duplicates.json to write (default: beside FACES)")
    dd.add_argument(
        "--listing", help="listing (.parquet) from `facesets stage` (default: listing.parquet beside FACES)"
    )
    dd.add_argument("--cache-dir", help="hash cache root (default: <FACES dir>/cache/dedup)")
    dd.add_argument("--configfile", action="append", help="take the dedup settings from this config.yaml")
    dd.add_argument("--dedup-settings", help="JSON object for the `dedup` config section")
    dd.add_argument("--workers", type=int)
    dd.add_argument("--phash-distance", type=int)
    dd.add_argument("--face-distance", type=float)
    dd.add_argument("--min-overlap", type=float)
    dd.add_argument("--min-ncc", type=float)
    dd.add_argument("--min-cell-ncc", type=float)
    dd.add_argument("--crops", action=argparse.BooleanOptionalAction, default=None, help="cut-outs are near-duplicates")
    dd.set_defaults(func=cmd_dedup)
