# face-sets: photo libraries -> per-identity face sets.
# The DAG, one rules/<stage>.smk per stage:
#   stage -> embed -> cluster -> (enrich -> dedup -> refine -> export -> manifest-merge: later stages)
# Run:  snakemake --profile wsl all      Preview:  snakemake --profile wsl -n
import os

from snakemake.utils import min_version

min_version("9.19")


# The default config (the demo source) only when no --configfile is given: a user's own
# config never picks up the demo. Relative paths are relative to the working directory.
if not workflow.overwrite_configfiles:
    if not os.path.exists("config/config.yaml"):
        raise WorkflowError(
            f"no config/config.yaml in {os.getcwd()}: run snakemake in the face-sets checkout,"
            " or pass your own config with --configfile my.yaml (before the targets)"
        )

    configfile: "config/config.yaml"



report: "report/workflow.rst"  # `snakemake --report report.html` after a run: rules/report.smk


include: "rules/common.smk"
include: "rules/stage.smk"
include: "rules/embed.smk"
include: "rules/cluster.smk"
include: "rules/enrich.smk"
include: "rules/dedup.smk"
include: "rules/refine.smk"
include: "rules/library.smk"
include: "rules/export.smk"
include: "rules/era.smk"
include: "rules/merge.smk"
include: "rules/report.smk"


rule all:
    input:
        face_tables=all_face_tables(),
        summary=f"{WORK}/reports/embed_summary.txt",
        raw_clusters=all_raw_clusters(),
        quality=expand(f"{WORK}/sources/{{source}}/quality.parquet", source=source_names()),
        duplicates=expand(f"{WORK}/sources/{{source}}/duplicates.json", source=source_names()),
        exports=all_exports(),
        library=f"{OUTPUT}/facesets_swap_ready/manifest.json",
        contact_sheets=expand(f"{OUTPUT}/report/{{source}}/contact_sheets", source=source_names()),
        run_stats=f"{OUTPUT}/report/run_stats.html",
        library_report=f"{OUTPUT}/report/library/library.html",
    default_target: True
