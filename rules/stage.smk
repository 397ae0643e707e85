# stage: list a source (recursive scan, globs, sha256, aliases, EXIF) -> listing.parquet
rule stage:
    output:
        listing=f"{WORK}/sources/{{source}}/listing.parquet",
    params:
        root=lambda w: str(src(w).root),
        include=lambda w: " ".join(f"--include '{g}'" for g in src(w).include),
        exclude=lambda w: " ".join(f"--exclude '{g}'" for g in src(w).exclude),
        fingerprint=source_fingerprint,
        schema_version=SCHEMA_VERSION,
        cache=lambda w: f"{WORK}/cache/stage/{w.source}.hashes.parquet",
        workers=lambda w: src(w).settings["stage"]["hash_workers"],
    log:
        f"{WORK}/logs/stage/{{source}}.log",
    conda:
        "../envs/facesets.yaml"
    shell:
        "facesets stage {params.root:q} {output.listing:q} --name {wildcards.source}"
        " {params.include} {params.exclude} --cache {params.cache:q} --workers {params.workers}"
        " 2> {log:q}"
