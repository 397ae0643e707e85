"""Helpers every subcommand group shares: logging, a config section from the command line, paths."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from facesets.config import load_config_files, load_schema, validate

log = logging.getLogger("facesets")


def setup_logging(log_file: str | None, verbose: bool) -> None:
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


def section_settings(args: argparse.Namespace, section: str, flags: tuple[str, ...], extra: dict | None = None) -> dict:
    """A validated config section: schema defaults < --configfile < --<section>-settings JSON < flags."""
    settings: dict = {}
    if getattr(args, "configfile", None):
        settings = dict(load_config_files(args.configfile).settings[section])
    raw = getattr(args, f"{section}_settings", None)
    if raw:
        from facesets.embedhost import decode_arg

        settings.update(json.loads(decode_arg(raw)))
    settings.update({k: getattr(args, k) for k in flags if getattr(args, k, None) is not None})
    for key, value in (extra or {}).items():
        settings[key] = {**settings.get(key, {}), **value}
    return validate(settings, load_schema("config")["properties"][section], f"{section} settings (command line)")


def section_flags(parser: argparse.ArgumentParser, section: str, flags: dict[str, type]) -> None:
    """``--configfile``, ``--<section>-settings`` and one typed ``--<key>`` per key of ``flags``:
    what ``section_settings(args, section, tuple(flags))`` reads (a flag left out: the config's)."""
    parser.add_argument("--configfile", action="append", help=f"take the {section} settings from this config.yaml")
    parser.add_argument(f"--{section}-settings", help=f"JSON object for the `{section}` config section")
    for key, kind in flags.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=kind, help=f"config {section}.{key}")


def beside(faces: str, name: str) -> Path:
    """``work/s/faces.parquet`` -> ``work/s/<name>``; ``x/t.parquet`` -> ``x/t.<name>``."""
    p = Path(faces)
    return p.with_name(name) if p.name == "faces.parquet" else p.with_name(f"{p.name.removesuffix('.parquet')}.{name}")


def pairs(values: list[str] | None, what: str) -> list[tuple[str, Path]]:
    """``SOURCE=PATH`` options as (name, path) pairs; ValueError naming the option otherwise."""
    out = []
    for v in values or []:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"{what} {v!r}: expected SOURCE=PATH")
        out.append((name, Path(path)))
    return out


def providers_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup, what: str = "") -> None:
    """``--providers``: ONNX Runtime providers, default from the environment (rules set FACESETS_PROVIDERS)."""
    parser.add_argument(
        "--providers",
        default=os.environ.get("FACESETS_PROVIDERS", "CPUExecutionProvider"),
        help=f"comma-separated ONNX Runtime providers{what} (env FACESETS_PROVIDERS)",
    )
