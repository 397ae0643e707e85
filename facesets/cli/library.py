"""``facesets library``, ``identities``, ``route``, ``extend``: the growing library (rules/library.smk)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from facesets.cli.common import pairs, section_settings

log = logging.getLogger("facesets")


def _model_thresholds(faces, where: str):
    from facesets.tables import one_model
    from facesets.thresholds import for_model

    model_id = one_model(faces, where)
    return model_id, (for_model(model_id) if model_id else None)


def _write_refine_dir(manifest: dict, faces, out: Path, link_mode: str) -> None:
    from facesets.refine import write_refine

    write_refine(manifest, faces, out, link_mode)


def cmd_identities(args: argparse.Namespace) -> int:
    from facesets.library import identities_manifest
    from facesets.tables import read_faces

    faces = read_faces(args.faces)
    model_id, th = _model_thresholds(faces, args.faces)
    source = args.source or (faces["source"].iloc[0] if len(faces) else Path(args.faces).parent.name)
    if th:
        manifest = identities_manifest(faces, th, source, model_id)
    else:
        manifest = identities_manifest(faces.iloc[:0], None, source, model_id)
    _write_refine_dir(manifest, faces, Path(args.out), args.link_mode)
    print(json.dumps({"identities": len(manifest["facesets"]), **manifest["stats"]}))
    return 0


def cmd_route(args: argparse.Namespace) -> int:
    from facesets.library import dry_run_report, known_identities, route_manifest
    from facesets.manifests import REFINE_MANIFEST, refine_manifest
    from facesets.tables import read_faces

    faces = read_faces(args.faces)
    model_id, th = _model_thresholds(faces, args.faces)
    quality = None
    if args.quality:
        from facesets.tables import read_quality

        quality = read_quality(Path(args.quality))
    settings = section_settings(args, "refine", ())
    cluster = section_settings(args, "cluster", ())  # the engine's method/exact_max/knn, as refine's
    known = known_identities(
        Path(args.ledger) if args.ledger else None,
        [(s, p / REFINE_MANIFEST if p.is_dir() else p) for s, p in pairs(args.known, "--known")],
        model_id,
    )
    source = args.source or (faces["source"].iloc[0] if len(faces) else Path(args.faces).parent.name)
    if th is None:
        manifest = refine_manifest([], {"faces": 0}, source=source, model_id=model_id, kind="mixed", settings=settings)
    else:
        manifest = route_manifest(faces, quality, known, th, settings, source, model_id, cluster)
    if args.dry_run:
        print(dry_run_report(manifest))
        return 0
    _write_refine_dir(manifest, faces, Path(args.out), args.link_mode)
    print(json.dumps({"facesets": len(manifest["facesets"]), "routed": manifest["stats"].get("routed", 0)}))
    return 0


def cmd_extend(args: argparse.Namespace) -> int:
    from facesets.extend import run_extend

    refine = section_settings(args, "refine", ("min_faces",)) if args.refine_out else None
    summary = run_extend(Path(args.faces), Path(args.raw), Path(args.refine_out) if args.refine_out else None, refine)
    print(json.dumps(summary))
    return 0


def library_table(manifest: dict) -> str:
    """The canonical manifest as a table: number, name, kind, faces, photos, top bundle."""
    rows = [("#", "name", "kind", "faces", "photos", "bundle")]
    for section in ("facesets", "thin_eras"):
        for e in manifest.get(section, []):
            kind = e["kind"] + (" (thin)" if section == "thin_eras" else "")
            rows.append(
                (str(e["number"]), e["name"], kind, str(e["faces"]), str(e["unique_images"]), e["bundles"]["top"])
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def cmd_library(args: argparse.Namespace) -> int:
    from facesets.manifests import read_library_manifest

    manifest = read_library_manifest(args.swap_ready)
    print(library_table(manifest))
    print(
        f"{len(manifest.get('facesets', []))} identities, {len(manifest.get('thin_eras', []))} thin eras in {args.swap_ready}"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    lib = sub.add_parser("library", help="list the identities of facesets_swap_ready/ (number, name, bundles)")
    lib.add_argument("swap_ready", nargs="?", default="output/facesets_swap_ready")
    lib.set_defaults(func=cmd_library)

    i = sub.add_parser("identities", help="hand-sorted identities: one sub-folder per person (-> refine folder)")
    i.add_argument("faces", help="face table (.parquet) of an `identities` source")
    i.add_argument("out", help="output folder: <label>/ + refine_manifest.json")
    i.add_argument("--source", help="source name (default: from the face table)")
    i.add_argument("--link-mode", choices=["hardlink", "symlink", "copy"], default="hardlink")
    i.set_defaults(func=cmd_identities)

    r = sub.add_parser("route", help="mixed bucket: route faces to known identities, discover the rest")
    r.add_argument("faces", help="face table (.parquet) of a `mixed` source")
    r.add_argument("out", help="output folder: routed + discovered sets + refine_manifest.json")
    r.add_argument("--quality", help="quality table from `facesets enrich`")
    r.add_argument("--known", action="append", help="SOURCE=REFINE_DIR of a source listed earlier (repeatable)")
    r.add_argument("--ledger", help="identity ledger (facesets_swap_ready/ledger.json), read if it exists")
    r.add_argument("--source", help="source name (default: from the face table)")
    r.add_argument("--link-mode", choices=["hardlink", "symlink", "copy"], default="hardlink")
    r.add_argument("--configfile", action="append", help="take the refine settings from this config.yaml")
    r.add_argument("--refine-settings", help="JSON object for the `refine` config section")
    r.add_argument("--cluster-settings", help="JSON object for the `cluster` config section (engine method)")
    r.add_argument("--dry-run", action="store_true", help="report routed counts and survivors; write nothing")
    r.set_defaults(func=cmd_route)

    x = sub.add_parser("extend", help="add a new face table to existing raw clusters without moving members")
    x.add_argument(
        "faces",
        help="face table (.parquet) with the old faces AND the new photos (required: every face of RAW must be in it)",
    )
    x.add_argument("raw", help="raw cluster folder from `facesets cluster` (updated in place)")
    x.add_argument("--refine-out", help="also refine the extended clusters into this folder")
    x.add_argument("--configfile", action="append", help="take the refine settings (--refine-out) from this config.yaml")
    x.add_argument("--refine-settings", help="JSON object for the `refine` config section (--refine-out)")
    x.add_argument("--min-faces", type=int, help="unique photos a face set needs (--refine-out)")
    x.set_defaults(func=cmd_extend)
