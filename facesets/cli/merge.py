"""``facesets manifest-merge``: exports into facesets_swap_ready/ (rules/merge.smk)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from facesets.cli.common import pairs


def cmd_manifest_merge(args: argparse.Namespace) -> int:
    from facesets.dedup import dedup_options
    from facesets.merge import merge_settings, run_merge

    min_faces = {}
    for name, value in pairs(args.min_faces, "--min-faces"):
        if not str(value).isdigit():
            raise ValueError(f"--min-faces {name}={value}: expected SOURCE=N (refine.min_faces of that source)")
        min_faces[name] = int(str(value))
    dedup = json.loads(args.dedup_settings) if args.dedup_settings else {}
    opts = dedup_options({k: v for k, v in dedup.items() if k != "workers"})
    given = {"backups": args.backups, "lock_timeout": args.lock_timeout}
    settings = merge_settings(
        opts,
        {k: v for k, v in given.items() if v is not None},
        top_n=args.top_n,
        min_faces=min_faces,
        decisions=Path(args.decisions) if args.decisions else None,
    )
    summary = run_merge(
        pairs(args.export, "--export"),
        [Path(p) for p in args.faces or []],
        Path(args.swap_ready),
        settings,
        eras=pairs(args.eras, "--eras"),
    )
    for note in summary["held"] + summary["conflicts"]:
        print(f"manifest-merge: {note['message']}", file=sys.stderr)
    print(json.dumps(summary))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("manifest-merge", help="merge exports into facesets_swap_ready/ (ledger + manifest.json)")
    m.add_argument("swap_ready", help="the facesets_swap_ready folder (updated in place)")
    m.add_argument("--export", action="append", help="SOURCE=EXPORT_DIR, in config order (repeatable)")
    m.add_argument("--faces", action="append", help="face tables (.parquet) of those sources (for centroids)")
    m.add_argument("--eras", action="append", help="IDENTITY=ERA_DIR from `facesets era-split` (repeatable)")
    m.add_argument("--top-n", type=int, help="crops in the top bundle (default: config export.top_n)")
    m.add_argument("--backups", type=int, help="previous versions kept under .backup/ (default: config merge.backups)")
    m.add_argument(
        "--min-faces",
        action="append",
        help="SOURCE=N: refine.min_faces of that source; a new discovered identity needs N photos (repeatable)",
    )
    m.add_argument("--dedup-settings", help="JSON of the `dedup` config section (near-duplicates across sources)")
    m.add_argument("--lock-timeout", type=float, help="seconds to wait for another merge (default: merge.lock_timeout)")
    m.add_argument("--decisions", help="curation decisions file (config key `decisions`); a missing file: none")
    m.set_defaults(func=cmd_manifest_merge)
