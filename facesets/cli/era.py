"""``facesets era-probe``, ``era-split``: one identity into eras (rules/era.smk; docs/eras.md)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from facesets.cli.common import providers_arg, section_settings
from facesets.era import (
    MANIFEST_VERSION,
    EraSettings,
    Seed,
    YearCache,
    export_eras,
    load_faces,
    load_quality,
    load_seed,
    model_of,
    probe_identity,
    resolve_settings,
    seed_digest,
    split_identity,
)
from facesets.manifests import ERAS_MANIFEST, EXPORT_MANIFEST, export_manifest

log = logging.getLogger("facesets.era")


class _Files(argparse.Action):
    """``--faces A B --quality Q OUT``: a list option that remembers it came last on the line, so
    the positional OUT that argparse let it swallow can be taken back (``_take_out``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest) or []), *values])
        namespace.last_list = self.dest


def _take_out(args: argparse.Namespace) -> str:
    if args.out:
        return args.out
    rest = getattr(args, getattr(args, "last_list", "") or "faces", None) or []
    if len(rest) < 2:
        raise ValueError(f"facesets {args.cmd}: missing the output path (last argument)")
    return rest.pop()


def _era_inputs(args: argparse.Namespace) -> tuple[str, pd.DataFrame, pd.DataFrame | None, Seed, EraSettings, str]:
    out = _take_out(args)
    section = section_settings(args, "eras", ("min_era_faces", "year_window"))
    faces = load_faces(args.faces)
    model_id = model_of(faces, args.faces)
    seed = load_seed(args.centroid_from, model_id)
    quality = load_quality(args.quality or [])
    return out, faces, quality, seed, resolve_settings(model_id, section), model_id


def _year_cache(args: argparse.Namespace) -> YearCache:
    if args.exif_cache:
        root = Path(args.exif_cache)
    else:
        from facesets.config import load_config_files

        work = load_config_files(args.configfile).work_root if args.configfile else Path("work")
        root = work / "cache" / "era" / "exif_years"
    return YearCache(root)


def cmd_era_probe(args: argparse.Namespace) -> int:
    from facesets.atomic import write_json

    out, faces, quality, seed, st, model_id = _era_inputs(args)
    cache = _year_cache(args)
    report = probe_identity(args.identity or seed.name, faces, quality, seed, st, cache, model_id)
    cache.save()
    write_json(out, report)
    cut = {c["threshold"]: c["sizes"][:8] for c in report["subclusters"]}
    print(json.dumps({"identity": report["identity"], "faces": report["faces"], "sizes_by_threshold": cut}))
    return 0


def _export_args(args: argparse.Namespace, model_id: str) -> dict[str, Any]:
    """The export-swap pieces for ``era-split --export``: settings, detector, duplicate groups."""
    from facesets.config import load_config_files
    from facesets.export import backend_of, make_detector, resolve_options
    from facesets.thresholds import for_model

    settings = section_settings(args, "export", ())
    embed = json.loads(args.embed_settings) if args.embed_settings else {}
    if args.model_dir:
        model_dir = Path(args.model_dir)
    else:
        model_dir = load_config_files(args.configfile).model_dir if args.configfile else Path("work/models")
    opts = resolve_options(settings, for_model(model_id))
    detector, detector_id = make_detector(
        args.backend or backend_of(model_id), embed, opts, model_dir, args.providers.split(",")
    )
    groups: dict[str, str] = {}
    for d in args.duplicates or []:
        from facesets.dedup import image_groups

        groups.update(image_groups(d))
    return {
        "settings": settings,
        "detector": detector,
        "detector_id": detector_id,
        "groups": groups,
        "crop_cache": Path(args.crop_cache) if args.crop_cache else None,
    }


def _write_pending(args: argparse.Namespace) -> int:
    """The identity is not in the library yet (a first run): an empty split, done again once it is.

    The rule's rerun trigger is the digest of the identity's ledger entry, "absent" now; after
    manifest-merge adds the identity, the next run sees the digest change and splits for real.
    """
    from facesets.atomic import write_json

    out = Path(_take_out(args))
    _, _, name = args.centroid_from.rpartition("#")
    identity = args.identity or name
    faces = load_faces(args.faces)
    model_id = model_of(faces, args.faces)
    note = f"identity {identity!r} is not in the library yet: run the workflow again after manifest-merge"
    log.warning("era-split: %s", note)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / ERAS_MANIFEST, {"version": MANIFEST_VERSION, "identity": identity, "model_id": model_id,
                                            "pending": note, "eras": []})  # fmt: skip
    write_json(
        out / EXPORT_MANIFEST, export_manifest(f"eras:{identity}", model_id)
    )
    print(json.dumps({"identity": identity, "eras": [], "pending": note}))
    return 0


def cmd_era_split(args: argparse.Namespace) -> int:
    from facesets.atomic import staged_dir, write_json

    if args.pending_ok and seed_digest(args.centroid_from) == "absent":
        return _write_pending(args)
    out, faces, quality, seed, st, model_id = _era_inputs(args)
    cache = _year_cache(args)
    manifest = split_identity(args.identity or seed.name, faces, quality, seed, st, cache, model_id)
    cache.save()
    exp = _export_args(args, model_id) if args.export else None
    with staged_dir(out) as tmp:
        write_json(tmp / ERAS_MANIFEST, manifest)
        if exp is not None:
            export = export_eras(
                manifest, args.faces, quality, exp["groups"], tmp, exp["settings"], exp["detector"],
                exp["detector_id"], exp["crop_cache"],
            )  # fmt: skip
            write_json(tmp / EXPORT_MANIFEST, export)
    summary = [
        {"name": e["name"], "faces": e["faces"], "dominant_year": e["dominant_year"], "thin": e["thin"]}
        for e in manifest["eras"]
    ]
    print(json.dumps({"identity": manifest["identity"], "eras": summary}))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Register ``era-probe`` and ``era-split`` on the subcommand parsers of ``facesets``."""
    for name, func, what in (
        ("era-probe", cmd_era_probe, "probe report of one identity before an era split (-> OUT.json)"),
        ("era-split", cmd_era_split, "split one identity into eras (-> OUT_DIR/eras_manifest.json)"),
    ):
        p = sub.add_parser(name, help=what, description=what)
        p.add_argument("out", nargs="?", help="output (may also come last, after the file lists)")
        p.add_argument(
            "--centroid-from",
            required=True,
            metavar="MANIFEST#NAME",
            help="curated faceset: manifest.json#faceset_name",
        )
        p.add_argument("--faces", nargs="+", action=_Files, required=True, help="face tables of the sources")
        p.add_argument("--quality", nargs="+", action=_Files, help="quality tables from `facesets enrich`")
        p.add_argument("--identity", help="name of the eras' identity (default: the faceset name)")
        if name == "era-split":
            p.add_argument(
                "--pending-ok",
                action="store_true",
                help="identity not in --centroid-from yet (first run): write an empty split instead of failing",
            )
        p.add_argument("--exif-cache", help="EXIF year cache folder (default: <work_root>/cache/era/exif_years)")
        p.add_argument("--configfile", action="append", help="take the eras settings from this config.yaml")
        p.add_argument("--eras-settings", help="JSON object for the `eras` config section")
        p.add_argument("--min-era-faces", type=int)
        p.add_argument("--year-window", type=int)
        p.set_defaults(func=func)
        if name != "era-split":
            continue
        x = p.add_argument_group("export (era-split --export: each era like a face set of export-swap)")
        x.add_argument("--export", action="store_true", help="crops, .fsz bundles and markers per era")
        x.add_argument("--duplicates", nargs="+", action=_Files, help="duplicates.json of the sources (dedup)")
        x.add_argument("--export-settings", help="JSON object for the `export` config section")
        x.add_argument("--embed-settings", help="JSON `embed` settings for the re-detection check")
        x.add_argument(
            "--backend", choices=["opencv", "insightface"], help="re-detection backend (default: the model's)"
        )
        x.add_argument("--model-dir", help="opencv model cache (default: the config's, else work/models)")
        providers_arg(x)
        x.add_argument("--crop-cache", help="folder of finished crops to reuse between runs")
