"""``facesets library``, ``identities``, ``route``, ``extend``: the growing library (rules/library.smk)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from facesets.cli.common import pairs, section_settings

log = logging.getLogger("facesets")


def _model_thresholds(faces):
    from facesets.thresholds import for_model

    ids = sorted(set(faces["model_id"])) if len(faces) else []
    if len(ids) > 1:
        raise ValueError(f"faces from several models ({', '.join(ids)}) cannot be compared")
    return (ids[0] if ids else ""), (for_model(ids[0]) if ids else None)


def _write_refine_dir(manifest: dict, faces, out: Path, link_mode: str) -> None:
    from facesets.refine import write_refine

    write_refine(manifest, faces, out, link_mode)


def cmd_identities(args: argparse.Namespace) -> int:
    from facesets import schema
    from facesets.library import identities_manifest

    faces = schema.read_table(args.cache)
    model_id, th = _model_thresholds(faces)
    source = args.source or (faces["source"].iloc[0] if len(faces) else Path(args.cache).parent.name)
    manifest = identities_manifest(faces, th, source) if th else identities_manifest(faces.iloc[:0], None, source)
    manifest["model_id"] = model_id
    _write_refine_dir(manifest, faces, Path(args.out), args.link_mode)
    print(json.dumps({"identities": len(manifest["facesets"]), **manifest["stats"]}))
    return 0


def cmd_route(args: argparse.Namespace) -> int:
    from facesets import schema
    from facesets.library import dry_run_report, known_identities, route_manifest

    faces = schema.read_table(args.cache)
    model_id, th = _model_thresholds(faces)
    quality = None
    if args.quality:
        from facesets.enrich import load_quality

        quality = load_quality(Path(args.quality))
    settings = section_settings(args, "refine", ())
    known = known_identities(
        Path(args.ledger) if args.ledger else None,
        [(s, p / "refine_manifest.json" if p.is_dir() else p) for s, p in pairs(args.known, "--known")],
        model_id,
    )
    source = args.source or (faces["source"].iloc[0] if len(faces) else Path(args.cache).parent.name)
    if th is None:
        manifest = {"version": 1, "source": source, "kind": "mixed", "stats": {"faces": 0}, "facesets": []}
    else:
        manifest = route_manifest(faces, quality, known, th, settings, source)
    manifest["model_id"] = model_id
    manifest["settings"] = settings
    if args.dry_run:
        print(dry_run_report(manifest))
        return 0
    _write_refine_dir(manifest, faces, Path(args.out), args.link_mode)
    print(json.dumps({"facesets": len(manifest["facesets"]), "routed": manifest["stats"].get("routed", 0)}))
    return 0


def cmd_extend(args: argparse.Namespace) -> int:
    from facesets.extend import run_extend

    summary = run_extend(Path(args.cache), Path(args.raw), Path(args.refine_out) if args.refine_out else None)
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
    path = Path(args.swap_ready) / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: no library manifest yet ({exc}); run the workflow first") from None
    print(library_table(manifest))
    print(
        f"{len(manifest.get('facesets', []))} identities, {len(manifest.get('thin_eras', []))} thin eras in {path.parent}"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    lib = sub.add_parser("library", help="list the identities of facesets_swap_ready/ (number, name, bundles)")
    lib.add_argument("swap_ready", nargs="?", default="output/facesets_swap_ready")
    lib.set_defaults(func=cmd_library)

    i = sub.add_parser("identities", help="hand-sorted identities: one sub-folder per person (-> refine folder)")
    i.add_argument("cache", help="face table (.parquet) of an `identities` source")
    i.add_argument("out", help="output folder: <label>/ + refine_manifest.json")
    i.add_argument("--source", help="source name (default: from the face table)")
    i.add_argument("--link-mode", choices=["hardlink", "symlink", "copy"], default="hardlink")
    i.set_defaults(func=cmd_identities)

    r = sub.add_parser("route", help="mixed bucket: route faces to known identities, discover the rest")
    r.add_argument("cache", help="face table (.parquet) of a `mixed` source")
    r.add_argument("out", help="output folder: routed + discovered sets + refine_manifest.json")
    r.add_argument("--quality", help="quality table from `facesets enrich`")
    r.add_argument("--known", action="append", help="SOURCE=REFINE_DIR of a source listed earlier (repeatable)")
    r.add_argument("--ledger", help="identity ledger (facesets_swap_ready/ledger.json), read if it exists")
    r.add_argument("--source", help="source name (default: from the face table)")
    r.add_argument("--link-mode", choices=["hardlink", "symlink", "copy"], default="hardlink")
    r.add_argument("--configfile", action="append", help="take the refine settings from this config.yaml")
    r.add_argument("--refine-settings", help="JSON object for the `refine` config section")
    r.add_argument("--dry-run", action="store_true", help="report routed counts and survivors; write nothing")
    r.set_defaults(func=cmd_route)

    x = sub.add_parser("extend", help="add a new face table to existing raw clusters without moving members")
    x.add_argument("cache", help="face table (.parquet) with the new photos (old faces may be included)")
    x.add_argument("raw", help="raw cluster folder from `facesets cluster` (updated in place)")
    x.add_argument("--refine-out", help="also refine the extended clusters into this folder")
    x.set_defaults(func=cmd_extend)
