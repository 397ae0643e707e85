"""``facesets export-swap``: crops and .fsz bundles per face set (rules/export.smk)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from facesets.cli.common import log, providers_arg, section_flags, section_settings

# export-swap's flags for the `export` section (--outlier-tight: null in the config = the model profile)
FLAGS = {
    "outlier_tight": float,
    "min_face_short": float,
    "pad_ratio": float,
    "min_pad_ratio": float,
    "out_size": int,
    "top_n": int,
    "candidate_distance": float,
    "candidate_min_score": float,
    "workers": int,
}


def cmd_export_swap(args: argparse.Namespace) -> int:
    from facesets.export import backend_of, make_detector, run_export

    settings = section_settings(args, "export", tuple(FLAGS))
    embed = json.loads(args.embed_settings) if args.embed_settings else {}
    model_dir = Path(args.model_dir) if args.model_dir else Path(args.faces).parent / "models"

    def detector(opts, model_id):
        backend = args.backend or backend_of(model_id)
        return make_detector(backend, embed, opts, model_dir, args.providers.split(","))

    candidates = args.candidates
    if candidates and not args.raw_manifest:
        raise ValueError("export-swap: --candidates needs --raw-manifest (the raw clusters' manifest.json)")
    if candidates is None and not args.raw_manifest:
        candidates = False  # the default (export.candidates) applies when there are raw clusters to look in
        log.info("export-swap: no --raw-manifest, so no near-singleton candidates")
    manifest = run_export(
        Path(args.faces),
        Path(args.refine_manifest),
        Path(args.out),
        settings,
        detector,
        raw_manifest=Path(args.raw_manifest) if args.raw_manifest else None,
        candidates=candidates,
        quality=Path(args.quality) if args.quality else None,
        duplicates=Path(args.duplicates) if args.duplicates else None,
        crop_cache=Path(args.crop_cache) if args.crop_cache else None,
    )
    print(json.dumps(manifest["stats"]))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    x = sub.add_parser("export-swap", help="single-face crops and roop .fsz bundles per face set (+ manifests)")
    x.add_argument("faces", help="face table (.parquet) from `facesets embed`")
    x.add_argument(
        "refine_manifest", help="refine_manifest.json from `facesets refine`, `identities` or `route` (not the raw clusters')"
    )
    x.add_argument("out", help="output folder (replaced atomically)")
    x.add_argument("--raw-manifest", help="manifest.json of the raw clusters from `facesets cluster` (for candidates)")
    x.add_argument(
        "--candidates",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="rescue singletons of the raw clusters near a set into _candidates/ (needs --raw-manifest); "
        "default: the config's export.candidates (on) when --raw-manifest is given, else off",
    )
    x.add_argument("--quality", help="quality table from `facesets enrich`")
    x.add_argument("--duplicates", help="duplicates.json from `facesets dedup`")
    x.add_argument("--crop-cache", help="folder of finished crops to reuse between runs")
    x.add_argument("--embed-settings", help="JSON `embed` settings for the re-detection check (backend options)")
    x.add_argument("--backend", choices=["opencv", "insightface"], help="re-detection backend (default: the model's)")
    x.add_argument("--model-dir", help="opencv model cache (default: <FACES dir>/models)")
    providers_arg(x)
    section_flags(x, "export", FLAGS)
    x.set_defaults(func=cmd_export_swap)
