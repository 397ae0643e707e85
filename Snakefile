# face-sets: photo libraries -> per-identity face sets.
# The DAG, one rules/<stage>.smk per stage:
#   stage -> embed -> cluster -> (enrich -> dedup -> refine -> export -> manifest-merge: later stages)
# Run:  snakemake --profile wsl all      Preview:  snakemake --profile wsl -n
from snakemake.utils import min_version

min_version("9.19")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/stage.smk"
include: "rules/embed.smk"
include: "rules/cluster.smk"


rule all:
    input:
        face_tables=all_face_tables(),
        summary=f"{WORK}/reports/embed_summary.txt",
        raw_clusters=all_raw_clusters(),
    default_target: True
