"""``facesets stage``: list a photo folder (rule stage, rules/stage.smk)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from facesets.config import load_schema


def cmd_stage(args: argparse.Namespace) -> int:
    from facesets.listing import stage_source

    stage_defaults = load_schema("config")["properties"]["stage"]["properties"]
    include = args.include or stage_defaults["include"]["default"]
    exclude = args.exclude if args.exclude is not None else stage_defaults["exclude"]["default"]
    name = args.name or Path(args.src).resolve().name
    stage_source(
        name,
        Path(os.path.abspath(args.src)),
        include,
        exclude,
        Path(args.listing),
        cache_path=Path(args.cache) if args.cache else None,
        workers=args.workers,
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("stage", help="list a photo folder: sha256, aliases, EXIF (-> listing.parquet)")
    s.add_argument("src", help="photo folder")
    s.add_argument("listing", help="output listing (.parquet)")
    s.add_argument("--name", help="source name (default: folder name)")
    s.add_argument("--include", action="append", help="include glob (repeatable)")
    s.add_argument("--exclude", action="append", help="exclude glob (repeatable)")
    s.add_argument("--cache", help="hash cache to reuse between runs")
    s.add_argument("--workers", type=int, default=4)
    s.set_defaults(func=cmd_stage)
