# face-sets: photo libraries -> per-identity face sets.
# The DAG, one rules/<stage>.smk per stage:
#   stage -> embed -> (enrich -> dedup -> cluster -> refine -> export -> manifest-merge: later stages)
# Run:  snakemake --profile wsl all      Preview:  snakemake --profile wsl -n
from snakemake.utils import min_version

min_version("9.19")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/stage.smk"
include: "rules/embed.smk"


rule all:
    input:
        face_tables=all_face_tables(),
        summary=f"{WORK}/reports/embed_summary.txt",
    default_target: True
