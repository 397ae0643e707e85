"""``facesets cluster``: raw clusters of a face table (rules/cluster.smk)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from facesets.cli.common import log, section_settings


def cmd_cluster(args: argparse.Namespace) -> int:
    from facesets import thresholds
    from facesets.rawclusters import ClusterOptions, run_cluster
    from facesets.tables import read_faces

    settings = section_settings(args, "cluster", ("threshold", "link_mode", "method", "exact_max", "knn"))
    threshold = settings["threshold"]
    if threshold is None:
        ids = read_faces(args.faces, ["model_id"])["model_id"].unique()
        threshold = thresholds.for_model(ids[0]).cluster if len(ids) else 0.55
        log.info("cluster threshold %.3f from the model profile of %s", threshold, ids[0] if len(ids) else "-")
    opts = ClusterOptions(
        threshold=threshold,
        link_mode=settings["link_mode"],
        method=settings["method"],
        exact_max=settings["exact_max"],
        knn=settings["knn"],
    )
    manifest = run_cluster(Path(args.faces), Path(args.out), opts)
    multi = [c for c in manifest["clusters"] if c["name"] != "_singletons"]
    print(
        json.dumps(
            {
                "faces": len(manifest["faces"]),
                "clusters": len(multi),
                "singletons": sum(c["faces"] for c in manifest["clusters"] if c["name"] == "_singletons"),
                "noface": len(manifest["noface"]),
                "vanished": len(manifest["vanished"]),
                "threshold": threshold,
            }
        )
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    k = sub.add_parser(
        "cluster", help="raw clusters of a face table: person_NNN/, _singletons/, _noface/, manifest.json"
    )
    k.add_argument("faces", help="face table (.parquet) from `facesets embed`")
    k.add_argument("out", help="output folder (replaced atomically)")
    k.add_argument("--threshold", type=float, help="average-linkage cut (default: the model's profile)")
    k.add_argument("--link-mode", choices=["hardlink", "symlink", "copy"])
    k.add_argument("--method", choices=["auto", "exact", "graph", "dense"])
    k.add_argument("--exact-max", type=int)
    k.add_argument("--knn", type=int)
    k.add_argument("--configfile", action="append", help="take the cluster settings from this config.yaml")
    k.add_argument("--cluster-settings", help="JSON object for the `cluster` config section")
    k.set_defaults(func=cmd_cluster)
