"""``facesets stage-immich``: stage an Immich server into a folder, then list that folder.

The rule ``stage_immich`` (rules/stage.smk) calls it with the source's ``immich`` block as
JSON (environment variable *names* only; the URL and keys are read from the environment
here), the include/exclude globs, and the face store + analyzer settings for the sha256
dedup. Exit 0: the listing is written (transient errors, if any, are reported and retried
on the next run). Exit 2: outage (circuit breaker), auth/permission or TLS problem, bad
config; the state is saved and the same command resumes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from facesets.atomic import write_json

log = logging.getLogger("facesets.immich")
LISTING_EXCLUDE = ("**/.*", "**/.*/**")  # temp files; sanitised names never start with '.'


class _Redact(logging.Filter):
    """Replaces secrets in every record that reaches a handler (defence in depth)."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if any(s in msg for s in self.secrets):
            for s in self.secrets:
                msg = msg.replace(s, "***")
            record.msg, record.args = msg, ()
        return True


@contextlib.contextmanager
def redacted_logs(secrets: Sequence[str]) -> Iterator[None]:
    handlers = list(logging.getLogger().handlers)
    filt = _Redact(secrets)
    for h in handlers:
        h.addFilter(filt)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(filt)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler or Snakemake stopping the job) saves the state like Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def immich_block(raw: str, where: str) -> dict:
    """The JSON ``immich`` block, checked and with defaults, as in a source YAML."""
    from facesets.config import load_schema, validate
    from facesets.errors import ConfigError
    from facesets.immich.settings import check_env_names

    try:
        block = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"{where}: --immich-settings is not JSON ({exc})") from None
    check_env_names({"immich": block}, where)
    return validate(block, load_schema("source")["properties"]["immich"], where)


def store_lookup(args: argparse.Namespace) -> Callable[[str], bool]:
    """sha256 -> already in the face store under the embed model's id (no store: never)."""
    if not args.store:
        return lambda sha: False
    from facesets.analyzers import create_analyzer
    from facesets.config import load_schema, validate
    from facesets.store import FaceStore

    embed = validate(
        json.loads(args.embed_settings or "{}"),
        load_schema("config")["properties"]["embed"],
        "embed settings (command line)",
    )
    model_dir = Path(args.model_dir) if args.model_dir else Path(args.store).parent / "models"
    analyzer = create_analyzer(args.backend, embed, model_dir=model_dir)
    done = frozenset(FaceStore(Path(args.store), analyzer.model_id).done())
    log.info("face store %s: %d photos known under %s", args.store, len(done), analyzer.model_id)
    return done.__contains__


def run(args: argparse.Namespace) -> int:
    from facesets.immich.client import CircuitBreaker, ClientStats, ImmichClient, client_options
    from facesets.immich.settings import label_of, resolve_env, staging_root
    from facesets.immich.stage import format_report, stage_immich, stage_options
    from facesets.listing import stage_source

    where = f"source {args.name}"
    block = immich_block(args.immich_settings, where)
    server = resolve_env(block, where)
    label = label_of(block, args.name)
    root = staging_root(args.work_root, label)
    recheck = bool(block["recheck_no_face"] or args.recheck_no_face)
    opts = stage_options(label, {**block, "recheck_no_face": recheck}, args.include, args.exclude)
    copts = client_options(block)
    with redacted_logs([k for _, k in server.keys]), sigterm_as_interrupt():
        in_store = store_lookup(args) if block["store_dedup"] else (lambda sha: False)
        breaker, stats = CircuitBreaker(copts.breaker_errors), ClientStats()
        clients = [ImmichClient(server.url, key, name, copts, breaker, stats) for name, key in server.keys]
        try:
            report = stage_immich(clients, opts, root, in_store)
        finally:
            for c in clients:
                c.close()
        write_json(root / "report.json", report.to_dict())
        print(format_report(report), flush=True)
        if report.outcome != "complete":
            log.error("immich %s: %s", label, report.message)
            return 2
        if report.errors:
            log.warning(
                "immich %s: %d assets had transient errors; they are retried when stage runs again",
                label,
                report.errors,
            )
        stage_source(
            args.name,
            root / "files",
            ["**"],
            LISTING_EXCLUDE,
            Path(args.listing),
            cache_path=Path(args.cache) if args.cache else None,
            workers=args.hash_workers,
        )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stage-immich",
        help="stage an Immich server's photos with big enough faces into <work>/immich/<label>/files, then list them",
    )
    p.add_argument("listing", help="output listing (.parquet) of the staged folder")
    p.add_argument("--name", required=True, help="source name (label defaults to it)")
    p.add_argument(
        "--immich-settings",
        required=True,
        help="JSON of the source's `immich` block (environment variable names, never the key)",
    )
    p.add_argument("--work-root", default="work", help="files go to <work-root>/immich/<label>/")
    p.add_argument("--include", action="append", help="include glob on originalPath (repeatable)")
    p.add_argument("--exclude", action="append", help="exclude glob on originalPath (repeatable)")
    p.add_argument("--store", help="face store root: photos it already holds are not staged again")
    p.add_argument(
        "--backend",
        choices=["opencv", "insightface"],
        default="opencv",
        help="embed backend whose model id keys the store",
    )
    p.add_argument("--embed-settings", help="JSON `embed` section (the store's model id depends on it)")
    p.add_argument("--model-dir", help="opencv model cache (default: <store>/../models)")
    p.add_argument("--cache", help="hash cache of the listing step")
    p.add_argument("--hash-workers", type=int, default=4)
    p.add_argument(
        "--recheck-no-face",
        action="store_true",
        help="ask Immich again about every asset skipped for no (big enough) face, e.g. after its face "
        "detection job finished (same as immich.recheck_no_face: true)",
    )
    p.set_defaults(func=run)
