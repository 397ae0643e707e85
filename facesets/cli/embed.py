"""``facesets embed``, ``merge-shards``, ``summary``: the face table of a source (rules/embed.smk)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from facesets.cli.common import log, providers_arg, section_settings
from facesets.config import load_schema
from facesets.options import build


def embed_settings(args: argparse.Namespace) -> dict:
    extra = {args.backend: {"det_thresh": args.det_thresh}} if args.det_thresh is not None else None
    return section_settings(args, "embed", ("det_size", "workers", "batch_images", "min_face"), extra)


def _console(fd: int | None):
    """The stream behind ``--progress-fd`` (rules/embed.smk: the console), None if it is not open."""
    if fd is None:
        return None
    try:
        os.fstat(fd)
        return os.fdopen(fd, "w", buffering=1, closefd=False)
    except OSError:
        return None  # e.g. a Windows embed host: the descriptor does not cross; the log has the lines


def cmd_embed(args: argparse.Namespace) -> int:
    from facesets import schema
    from facesets.analyzers import create_analyzer
    from facesets.embed import EmbedOptions, embed_listing
    from facesets.listing import group, scan
    from facesets.store import FaceStore

    settings = embed_settings(args)
    src = Path(args.src)
    faces_path = Path(args.faces)
    if src.is_dir():
        stage_defaults = load_schema("config")["properties"]["stage"]["properties"]
        facts = scan(
            Path(os.path.abspath(src)),
            stage_defaults["include"]["default"],
            stage_defaults["exclude"]["default"],
            workers=4,
        )
        listing = group(facts, args.source or src.resolve().name)
    elif src.suffix == ".parquet" and src.exists():
        listing = schema.read_table(src)
    else:
        log.error("%s: not a folder or a listing .parquet file", src)
        return 2
    if args.shard:
        from facesets.shards import parse_shard, select_shard

        listing = select_shard(listing, *parse_shard(args.shard))
    locate = None
    if args.path_map:  # checked before anything runs: a wrong map must not record "file not found"
        from facesets.winpath import path_locator

        readable = listing[listing["error"].isna() & listing["sha256"].notna()]
        locate = path_locator(args.path_map, readable["path"])
    model_dir = Path(args.model_dir or faces_path.parent / "models")
    analyzer = create_analyzer(args.backend, settings, providers=args.providers.split(","), model_dir=model_dir)
    store = FaceStore(Path(args.store or faces_path.parent / "store"), analyzer.model_id)
    opts = build(EmbedOptions, "embed", settings)
    echo = _console(args.progress_fd)
    stats = embed_listing(
        listing,
        analyzer,
        store,
        opts,
        faces_path,
        plain_progress=args.plain_progress,
        locate=locate,
        progress_echo=echo,
    )
    print(json.dumps(stats.__dict__))
    return 0


def cmd_merge_shards(args: argparse.Namespace) -> int:
    from facesets.shards import merge_shards

    stats = merge_shards([Path(p) for p in args.shards], Path(args.out))
    print(json.dumps(stats.__dict__))
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from facesets.summary import format_summary, summarize
    from facesets.tables import read_faces

    for p in args.tables:  # a missing or unreadable table: one line naming it, exit 2
        read_faces(p, ["face_key"])
    print(format_summary(summarize([Path(p) for p in args.tables])))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("embed", help="detect and embed faces (-> face table); resumable")
    e.add_argument("src", help="photo folder, or a listing .parquet from `facesets stage`")
    e.add_argument("faces", help="output face table (.parquet); image records and stats go beside it")
    e.add_argument("--store", help="face store root (default: <FACES dir>/store)")
    e.add_argument("--backend", choices=["opencv", "insightface"], default="opencv")
    e.add_argument("--model-dir", help="opencv model cache (default: <FACES dir>/models)")
    providers_arg(e)
    e.add_argument("--configfile", action="append", help="take the embed settings from this config.yaml")
    e.add_argument("--embed-settings", help="JSON object for the `embed` config section (or b64:<base64 of it>)")
    e.add_argument("--source", help="source name when SRC is a folder")
    e.add_argument("--det-size", type=int)
    e.add_argument("--det-thresh", type=float)
    e.add_argument("--min-face", type=int)
    e.add_argument("--workers", type=int)
    e.add_argument("--batch-images", type=int)
    e.add_argument("--shard", help="I/N: embed only shard I of N (photos split by sha256)")
    e.add_argument("--plain-progress", action="store_true", help="log lines instead of a progress bar")
    e.add_argument(
        "--progress-fd", type=int, help="also write the progress lines to this open file descriptor (the console)"
    )
    e.add_argument(
        "--path-map",
        action="append",
        metavar="LINUX_ROOT=HOST_ROOT",
        help="open the listing's photos under LINUX_ROOT at HOST_ROOT (a Windows embed of a WSL listing); repeatable",
    )
    e.set_defaults(func=cmd_embed)

    ms = sub.add_parser("merge-shards", help="merge shard face tables into one source face table")
    ms.add_argument("out", help="output face table (.parquet)")
    ms.add_argument("shards", nargs="+", help="shard face tables from `facesets embed --shard I/N`")
    ms.set_defaults(func=cmd_merge_shards)

    m = sub.add_parser("summary", help="print images, faces, no-face images, errors, img/s")
    m.add_argument("tables", nargs="+", help="face tables (.parquet)")
    m.set_defaults(func=cmd_summary)
