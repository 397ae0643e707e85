# era split (docs/eras.md): a curated identity of the library -> eras <identity>_era<k>,
# one job per name in config eras.identities; targets: all_eras() (rules/common.smk).
# Output {output}/eras/<identity>/: eras_manifest.json, and with eras.export (default) one
# export-swap-like folder per era + manifest.json (contract 4 shape, source "eras:<identity>").
# The curated centroid is read from the identity ledger when the job runs (a param, not an
# input: manifest-merge rewrites the ledger and folds the eras back in); the digest of the
# identity's ledger entry is a param, so a changed identity reruns its split.
from facesets.era import seed_digest  # noqa: E402


rule era_split:
    input:
        faces=all_face_tables(),
        quality=expand(f"{WORK}/sources/{{source}}/quality.parquet", source=source_names()),
        duplicates=expand(f"{WORK}/sources/{{source}}/duplicates.json", source=source_names())
        if config["eras"]["export"]
        else [],
    output:
        directory(f"{OUTPUT}/eras/{{identity}}"),
    wildcard_constraints:
        identity=r"[^/]+",
    params:
        seed=lambda w: era_seed_spec(w.identity),
        seed_digest=lambda w: seed_digest(era_seed_spec(w.identity)),
        settings=era_settings(),
        export=era_export_args(),
        exif_cache=f"{WORK}/cache/era/exif_years",
    log:
        f"{WORK}/logs/era/{{identity}}.log",
    conda:
        "../envs/facesets.yaml"
    shell:
        "facesets era-split {output:q} --centroid-from {params.seed:q} --identity {wildcards.identity:q} --pending-ok"
        " --faces {input.faces:q} --quality {input.quality:q} --exif-cache {params.exif_cache:q}"
        " --eras-settings {params.settings:q} {params.export} 2> {log:q}"
