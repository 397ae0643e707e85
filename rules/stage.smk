# stage: list a source (recursive scan, globs, sha256, aliases, EXIF) -> listing.parquet
# Dispatch on the source's kind: folder-like kinds are listed in place (rule stage); kind
# immich is first staged from the server into {WORK}/immich/<label>/files (rule stage_immich).
rule stage:
    input:
        state=stage_state,
    output:
        listing=f"{WORK}/sources/{{source}}/listing.parquet",
    wildcard_constraints:
        source=kind_constraint("folder", "identities", "mixed"),
    params:
        root=lambda w: str(src(w).root),
        include=lambda w: " ".join(f"--include '{g}'" for g in src(w).include),
        exclude=lambda w: " ".join(f"--exclude '{g}'" for g in src(w).exclude),
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


# Immich: the server is not a file Snakemake can track, so this rule reruns when its settings
# change or when asked: `snakemake --forcerun stage_immich` pulls new photos (incremental and
# resumable: state.json remembers every asset). Only environment variable NAMES travel in
# params and the command line; the job reads the URL and API key(s) from its environment.
rule stage_immich:
    output:
        listing=f"{WORK}/sources/{{source}}/listing.parquet",
    wildcard_constraints:
        source=kind_constraint("immich"),
    params:
        immich=lambda w: json.dumps(src(w).immich, sort_keys=True),
        work=lambda w, output: os.path.dirname(os.path.dirname(os.path.dirname(output.listing))),  # WORK
        include=lambda w: " ".join(f"--include '{g}'" for g in src(w).include),
        exclude=lambda w: " ".join(f"--exclude '{g}'" for g in src(w).exclude),
        backend=lambda w: src(w).settings["backend"],
        embed=embed_result_settings,
        store=f"{WORK}/store",
        model_dir=str(WF.model_dir),
        schema_version=SCHEMA_VERSION,
        cache=lambda w: f"{WORK}/cache/stage/{w.source}.hashes.parquet",
        workers=lambda w: src(w).settings["stage"]["hash_workers"],
    log:
        f"{WORK}/logs/stage/{{source}}.log",
    conda:
        "../envs/facesets.yaml"
    shell:
        "facesets stage-immich {output.listing:q} --name {wildcards.source} --work-root {params.work:q}"
        " --immich-settings {params.immich:q} {params.include} {params.exclude}"
        " --store {params.store:q} --backend {params.backend} --embed-settings {params.embed:q}"
        " --model-dir {params.model_dir:q} --cache {params.cache:q} --hash-workers {params.workers}"
        " 2> {log:q}"
