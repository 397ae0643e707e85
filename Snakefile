# face-sets: photo libraries -> per-identity face sets.
# The DAG, one rules/<stage>.smk per stage:
#   stage -> embed -> cluster -> (enrich -> dedup -> refine -> export -> manifest-merge: later stages)
# Run:  snakemake --profile wsl all      Preview:  snakemake --profile wsl -n
from snakemake.utils import min_version

min_version("9.19")


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
    default_target: True
