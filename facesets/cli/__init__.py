"""``facesets <subcommand>``: the same operations as the Snakemake rules, without Snakemake.

Rules call these subcommands, so there is one implementation. Names and argument order
follow the seed (``facesets embed SRC FACES``); later stages add cluster, refine, dedup,
extend, enrich and export-swap.

This package sits on top of facesets: one module per subcommand group (one per rule file,
rules/<group>.smk), and nothing in facesets/ imports it.
"""

from __future__ import annotations

import argparse

from facesets.cli import (
    cluster,
    dedup,
    embed,
    enrich,
    era,
    export,
    immich,
    library,
    merge,
    refine,
    report,
    review,
    setup,
    stage,
)
from facesets.cli.common import log, setup_logging
from facesets.errors import ConfigError

GROUPS = (stage, immich, embed, cluster, enrich, dedup, refine, export, report, setup, library, merge, era, review)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="facesets", description=__doc__.splitlines()[0])
    p.add_argument("--log", help="also write the log to this file")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)
    for group in GROUPS:
        group.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "configfile", "unset") is None and args.cmd == "check-config":
        args.configfile = ["config/config.yaml"]
    setup_logging(args.log, args.verbose)
    try:
        return args.func(args)
    except (ConfigError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted; run the same command again to resume")
        return 130
    except OSError as exc:
        from facesets import diskfull

        if not diskfull.is_disk_full(exc):
            raise
        log.error("%s", diskfull.message(exc))
        return diskfull.EXIT_STATUS
