"""``facesets manifest-merge``: exports into facesets_swap_ready/ (rules/merge.smk)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from facesets.cli.common import pairs


def cmd_manifest_merge(args: argparse.Namespace) -> int:
    from facesets.merge import MergeSettings, run_merge

    summary = run_merge(
        pairs(args.export, "--export"),
        [Path(p) for p in args.faces or []],
        Path(args.swap_ready),
        MergeSettings(top_n=args.top_n, backups=args.backups),
        eras=pairs(args.eras, "--eras"),
    )
    print(json.dumps(summary))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("manifest-merge", help="merge exports into facesets_swap_ready/ (ledger + manifest.json)")
    m.add_argument("swap_ready", help="the facesets_swap_ready folder (updated in place)")
    m.add_argument("--export", action="append", help="SOURCE=EXPORT_DIR, in config order (repeatable)")
    m.add_argument("--faces", action="append", help="face tables (.parquet) of those sources (for centroids)")
    m.add_argument("--eras", action="append", help="IDENTITY=ERA_DIR from `facesets era-split` (repeatable)")
    m.add_argument("--top-n", type=int, default=30)
    m.add_argument("--backups", type=int, default=20, help="previous versions kept under .backup/")
    m.set_defaults(func=cmd_manifest_merge)
