"""``facesets enrich``: per-face quality table (rules/enrich.smk)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from facesets.cli.common import beside, providers_arg, section_settings


def cmd_enrich(args: argparse.Namespace) -> int:
    from facesets.enrich import enrich_options, enrich_table

    settings = section_settings(args, "enrich", ("workers", "batch_faces"))
    embed = section_settings(args, "embed", ())
    opts = enrich_options(settings, embed, landmarks=settings["landmarks"] and not args.no_landmarks)
    faces_path = Path(args.faces)
    stats = enrich_table(
        faces_path,
        Path(args.out) if args.out else beside(args.faces, "quality.parquet"),
        Path(args.cache_dir) if args.cache_dir else faces_path.parent / "cache" / "enrich",
        opts,
        images_path=Path(args.images) if args.images else None,
        insightface_settings=embed["insightface"],
        providers=args.providers.split(","),
    )
    print(json.dumps(stats.__dict__))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    en = sub.add_parser(
        "enrich", help="per-face quality: face_short, blur, pose, symmetry, EXIF year (-> quality.parquet)"
    )
    en.add_argument("faces", help="face table (.parquet) from `facesets embed`")
    en.add_argument("--out", help="quality table to write (default: quality.parquet beside FACES)")
    en.add_argument("--images", help="image records (capture times; default: the ones beside FACES)")
    en.add_argument("--cache-dir", help="enrich cache root (default: <FACES dir>/cache/enrich)")
    en.add_argument("--configfile", action="append", help="take the enrich/embed settings from this config.yaml")
    en.add_argument("--enrich-settings", help="JSON object for the `enrich` config section")
    en.add_argument("--embed-settings", help="JSON object for the `embed` section (insightface pack for landmarks)")
    en.add_argument("--workers", type=int)
    en.add_argument("--batch-faces", type=int)
    en.add_argument("--no-landmarks", action="store_true", help="skip the insightface pack's landmark models")
    providers_arg(en, " for the landmark models")
    en.set_defaults(func=cmd_enrich)
