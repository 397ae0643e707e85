"""``facesets review``: a local page over the library that writes curation decisions (facesets.review)."""

from __future__ import annotations

import argparse
from pathlib import Path

from facesets.config import load_config_files


def cmd_review(args: argparse.Namespace) -> int:
    from facesets.review.server import serve

    settings = load_config_files(args.configfile).settings
    library = Path(args.library) if args.library else Path(settings["output_root"]) / "facesets_swap_ready"
    decisions = Path(args.decisions or settings["decisions"])
    server = serve(library, decisions, port=args.port, verbose=args.verbose)
    print(f"facesets review: {server.url}", flush=True)
    print(f"  library {server.library.root}; decisions are written to {server.library.decisions_path}", flush=True)
    print("  serving on 127.0.0.1 only; Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser(
        "review", help="a local page over the library: rename, merge, split, reject, accept (-> decisions file)"
    )
    r.add_argument(
        "--configfile", nargs="+", default=["config/config.yaml"], help="config files (output_root, decisions)"
    )
    r.add_argument("--library", help="the facesets_swap_ready folder (default <output_root>/facesets_swap_ready)")
    r.add_argument("--decisions", help="the decisions file (default: config key `decisions`)")
    r.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    r.set_defaults(func=cmd_review)
