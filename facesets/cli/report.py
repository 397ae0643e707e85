"""``facesets contact-sheets``, ``run-stats``: the reports (rules/report.smk)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from facesets.cli.common import section_flags, section_settings
from facesets.options import build, threads

FLAGS = {"columns": int, "thumb": int, "max_tiles": int}


def cmd_contact_sheets(args: argparse.Namespace) -> int:
    from facesets.report import SheetOptions, contact_sheets

    s = section_settings(args, "report", tuple(FLAGS))
    written = contact_sheets(
        Path(args.export),
        Path(args.out),
        build(SheetOptions, "report", s),
        cache=Path(args.cache) if args.cache else None,
        workers=threads(s["workers"] if args.workers is None else args.workers),
    )
    print(json.dumps({"sheets": len(written), "out": args.out}))
    return 0


def cmd_library_report(args: argparse.Namespace) -> int:
    from facesets.report import SheetOptions, library_report

    s = section_settings(args, "report", tuple(FLAGS))
    written = library_report(
        Path(args.swap_ready),
        Path(args.out),
        Path(args.page),
        build(SheetOptions, "report", s),
        cache=Path(args.cache) if args.cache else None,
        workers=threads(s["workers"] if args.workers is None else args.workers),
    )
    print(json.dumps({"sheets": len(written), "out": args.out, "page": args.page}))
    return 0


def cmd_run_stats(args: argparse.Namespace) -> int:
    from facesets.report import SourceFiles, run_stats

    try:
        records = json.loads(args.sources or "[]")
        sources = [
            SourceFiles(name=r["name"], **{k: Path(v) for k, v in r.items() if k != "name" and v}) for r in records
        ]
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"run-stats --sources: expected a JSON list of {{name, faces, raw, ...}} objects ({exc})") from None
    stats = run_stats(sources, Path(args.out), Path(args.json) if args.json else None)
    print(json.dumps({"sources": len(stats), "out": args.out}))
    return 0


def _incremental_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache", help="folder of this output's finished sheets: only changed sets are drawn again")
    p.add_argument("--workers", type=int, help="sheets drawn at once (default: report.workers; 0 = all cores)")


def register(sub: argparse._SubParsersAction) -> None:
    cs = sub.add_parser("contact-sheets", help="one PNG per exported face set: its crops with their quality scores")
    cs.add_argument("export", help="export folder (with manifest.json) from `facesets export-swap`")
    cs.add_argument("out", help="output folder of <faceset>.png (replaced atomically)")
    section_flags(cs, "report", FLAGS)
    _incremental_args(cs)
    cs.set_defaults(func=cmd_contact_sheets)

    lr = sub.add_parser("library-report", help="the library: one contact sheet per identity + an overview page")
    lr.add_argument("swap_ready", help="the facesets_swap_ready folder (manifest.json + ledger.json)")
    lr.add_argument("out", help="output folder of <number>_<name>.png (replaced atomically)")
    lr.add_argument("--page", required=True, help="the overview page (.html)")
    section_flags(lr, "report", {})
    _incremental_args(lr)
    lr.set_defaults(func=cmd_library_report)

    rs = sub.add_parser("run-stats", help="an HTML page of run statistics per source (images ... rejections by gate)")
    rs.add_argument("out", help="output page (.html)")
    rs.add_argument(
        "--sources",
        help='JSON list, one object per source: {"name": N, "faces": FACES, "raw": RAW_DIR, "duplicates": JSON, '
        '"refine": REFINE_DIR, "export": EXPORT_DIR} (keys but name optional)',
    )
    rs.add_argument("--json", help="also write the numbers as JSON")
    rs.set_defaults(func=cmd_run_stats)
