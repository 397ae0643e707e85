# Helpers shared by every rule: validated config, sources, paths.
import json
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, workflow.basedir)  # the facesets package, also when not pip-installed

from facesets.config import ConfigError, load_workflow_config  # noqa: E402
from facesets.embedhost import EmbedHost  # noqa: E402
from facesets.era.names import check_era_identities  # noqa: E402
from facesets.listing import fingerprint, retry_token  # noqa: E402
from facesets.schema import SCHEMA_VERSION  # noqa: E402
from facesets.snakelock import clear_stale_locks  # noqa: E402
from facesets.triggers import state_file  # noqa: E402


def _config_origin():
    files = [str(f) for f in getattr(workflow, "configfiles", [])] or ["config/config.yaml"]
    return " + ".join(files) + " (+ --config overrides)"


try:
    WF = load_workflow_config(config, where=_config_origin())
except ConfigError as exc:
    raise WorkflowError(f"invalid configuration:\n{exc}") from None

config.update(WF.settings)  # defaults filled, visible to every rule


def decided_names(cfg):
    """The names that `name` decisions of the decisions file give identities."""
    from facesets.decisions import DecisionError, load

    path = cfg.get("decisions")
    try:
        return [d.name for d in load(path) if d.action == "name" and d.name] if path and os.path.exists(path) else []
    except DecisionError as exc:
        raise WorkflowError(f"invalid decisions file:\n{exc}") from None


# An eras.identities name the library cannot have stops here, before anything runs.
_eras_error = check_era_identities(
    config["eras"]["identities"],
    WF.output_root / "facesets_swap_ready",
    [s.root for s in WF.sources if s.kind == "identities"],
    decided_names(config) if config["eras"]["identities"] else [],
)
if _eras_error:
    raise WorkflowError(f"invalid configuration:\n{_config_origin()}: {_eras_error}")
if workflow.is_main_process:  # a run killed by SIGKILL left its locks: "run the same command again" works
    _locks = clear_stale_locks(Path.cwd())
    if _locks.message:
        print(f"face-sets: {_locks.message}", file=sys.stderr)
WORK = str(WF.work_root)
OUTPUT = str(WF.output_root)
# Set (not read) for the jobs: they run `facesets ...` from the interpreter that runs
# Snakemake (the project's venv), and the device choice travels in the environment, not
# in params, so switching profiles does not rerun finished jobs.
os.environ.update(
    PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]),
    FACESETS_PROVIDERS=",".join(config["providers"]),
)
# Keys that change how fast embed runs but not what it produces.
NON_RESULT_EMBED_KEYS = ("workers", "shards")
# Where embed jobs run (config embed_host; profiles/directml sets it): see embed_host_args.
EMBED_HOST = EmbedHost.from_settings(config)


def source_names():
    return [s.name for s in WF.sources]


def src(wildcards):
    return WF.source(wildcards.source)


def all_raw_clusters():
    return expand(f"{OUTPUT}/raw/{{source}}", source=source_names())


def all_face_tables():
    return expand(f"{WORK}/sources/{{source}}/faces.parquet", source=source_names())


def stage_state(wildcards):
    """Input of `stage`: a file rewritten only when the source's photos (paths, sizes, mtimes)
    or its listing settings change, so new photos rerun `stage` also with no .snakemake/
    metadata (facesets/triggers.py)."""
    s = src(wildcards)
    return state_file(
        f"{WORK}/sources/{s.name}/state/stage.json",
        {
            "root": str(s.root),
            "include": list(s.include),
            "exclude": list(s.exclude),
            "schema_version": SCHEMA_VERSION,
            "photos": fingerprint(s.root, s.include, s.exclude),
            # files embed could not read or found changed: their stat now (#14: a restored,
            # chmod-ed back or replaced file re-lists the source; a persisting condition does not)
            "retry": retry_token(f"{WORK}/sources/{s.name}/listing.parquet"),
        },
    )


def embed_result_settings(wildcards):
    """The embed settings that change results, as JSON (the embed job's --embed-settings)."""
    s = dict(src(wildcards).settings["embed"])
    for key in NON_RESULT_EMBED_KEYS:
        s.pop(key, None)
    return json.dumps(s, sort_keys=True)


def embed_state(wildcards):
    """Input of the embed jobs: the result settings as a file (rewritten only when they change)."""
    s = src(wildcards)
    payload = {"backend": s.settings["backend"], "embed": json.loads(embed_result_settings(wildcards))}
    return state_file(f"{WORK}/sources/{s.name}/state/embed.json", {**payload, "schema_version": SCHEMA_VERSION})


def embed_shard_tables(wildcards):
    """The shard face tables of a source: embed.shards jobs, merged by rule embed."""
    n = src(wildcards).settings["embed"]["shards"]
    return [f"{WORK}/sources/{wildcards.source}/shards/{n}/{i}.faces.parquet" for i in range(n)]


def embed_host_args(wildcards, input, output):
    """The embed command's host-dependent pieces: launcher, providers, paths as the host sees them.

    A function of input/output, so Snakemake does not record it as a rerun-trigger param (the
    files are tracked as input/output): switching profiles (local CPU/CUDA, DirectML on the
    Windows host) reruns nothing. The store and model dir stay plain params.
    """
    return EMBED_HOST.job_args(
        listing=input.listing,
        faces=output.faces,
        store=f"{WORK}/store",
        model_dir=str(WF.model_dir),
        photo_root=str(src(wildcards).root),
        settings=embed_result_settings(wildcards),
    )


def embed_threads(wildcards):
    return src(wildcards).settings["embed"]["workers"] or workflow.cores


def sources_of_kind(*kinds):
    return [s.name for s in WF.sources if s.kind in kinds]


def kind_constraint(*kinds):
    """Wildcard regex matching exactly the sources of these kinds (never matches when none)."""
    return "|".join(re.escape(n) for n in sources_of_kind(*kinds)) or "(?!)"


def earlier_sources(wildcards):
    """Sources listed before this one in the config (mixed sources route to their identities)."""
    names = source_names()
    return names[: names.index(wildcards.source)]


def earlier_refines(wildcards):
    return [f"{OUTPUT}/refine/{n}" for n in earlier_sources(wildcards)]


def route_state(wildcards):
    """Input of `route`: what routing takes from the library's ledger (non-era identities: number,
    name, kind, and how many faces other sources gave each), rewritten only when an identity comes,
    goes or is renamed, or other sources' faces of one change by more than
    facesets.library.ROUTE_MEMBER_DRIFT. A grown library reroutes the mixed sources on the next
    run; a source's own routed faces never do, so reruns end (docs/decisions.md #12 follow-up)."""
    from facesets.library import routing_state, same_routing
    from facesets.triggers import state_file_unless_same

    ledger = f"{OUTPUT}/facesets_swap_ready/ledger.json"
    try:
        state = routing_state(Path(ledger), wildcards.source)
    except ValueError as exc:
        raise WorkflowError(f"cannot read the identity ledger:\n{exc}") from None
    return state_file_unless_same(
        f"{WORK}/sources/{wildcards.source}/state/route.json",
        {**state, "schema_version": SCHEMA_VERSION},
        same_routing,
    )


def all_exports():
    return expand(f"{OUTPUT}/export/{{source}}", source=source_names())


def decisions_input():
    """The curation decisions file (config `decisions`) as an input of manifest-merge, when it exists:
    creating, changing or deleting it reruns the merge (facesets/decisions.py)."""
    return [config["decisions"]] if os.path.exists(config["decisions"]) else []


def all_eras():
    """The era splits of config eras.identities (rules/era.smk): {output}/eras/<identity>/."""
    return expand(f"{OUTPUT}/eras/{{identity}}", identity=config["eras"]["identities"])


# ---------------------------------------------------------------- param helpers (one set for all rules)
# Settings travel as one JSON object per config section (`--<section>-settings`); keys that
# change how fast a step runs but not what it produces (`workers`) are left out, so changing
# them reruns nothing, and come back as the job's threads.


SPEED_KEYS = ("workers",)


def what_not_how_fast(values):
    """A config section minus the keys that change how fast, not what (SPEED_KEYS)."""
    return {k: v for k, v in values.items() if k not in SPEED_KEYS}


def section_json(section):
    """Param function: the source's `section` as JSON, minus the how-fast keys."""
    return lambda w: json.dumps(what_not_how_fast(src(w).settings[section]), sort_keys=True)


def section_threads(section):
    """Threads of a job: the source's `<section>.workers`, or all cores when 0."""
    return lambda w: src(w).settings[section]["workers"] or workflow.cores


def export_args(settings):
    """export-swap's settings flags, for rule export and era_split (`era-split --export`) alike.

    `settings`: a source's effective settings or the global config (backend, embed, export).
    """
    import shlex

    backend = settings["backend"]
    export = what_not_how_fast(settings["export"])
    redetect = {backend: settings["embed"][backend]} if backend == "insightface" else {}
    parts = ["--backend", backend, "--export-settings", json.dumps(export, sort_keys=True)]
    parts += ["--embed-settings", json.dumps(redetect, sort_keys=True), "--model-dir", str(WF.model_dir)]
    parts += ["--crop-cache", f"{WORK}/cache/crops"]
    return " ".join(shlex.quote(p) for p in parts)


def era_seed_spec(identity):
    """The `--centroid-from` of the split of `identity` (config eras.centroid_from, else the ledger)."""
    base = config["eras"].get("centroid_from") or f"{OUTPUT}/facesets_swap_ready/ledger.json"
    return f"{base}#{identity}"


def era_settings():
    """The `eras` section as era_split's settings param, minus the keys that choose *what* is split."""
    return json.dumps({k: v for k, v in config["eras"].items() if k not in ("identities", "centroid_from")}, sort_keys=True)


def era_export_args():
    """`--export` and export-swap's flags for era_split, or "" when eras.export is off."""
    if not config["eras"]["export"]:
        return ""
    import shlex

    dups = " ".join(shlex.quote(f"{WORK}/sources/{s}/duplicates.json") for s in source_names())
    return f"--export {export_args(config)} --duplicates {dups}"
