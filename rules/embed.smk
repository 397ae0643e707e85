# embed: listing + face store -> face table (+ image records, run stats)
# The face store under {WORK}/store is a cache, not an output: rules read it and add to it.
# Each source is embedded in embed.shards independent jobs (photos split by sha256), which run
# in parallel (local cores or cluster jobs); `embed` merges them into the source's face table.
# The job's log gets stderr; `3>&2` first hands it the console as fd 3 for progress lines
# (every ~10 s: done/total, img/s, ETA), so a person sees progress while snakemake runs.
rule embed_shard:
    input:
        listing=f"{WORK}/sources/{{source}}/listing.parquet",
        state=embed_state,
    output:
        faces=f"{WORK}/sources/{{source}}/shards/{{n}}/{{shard}}.faces.parquet",
        images=f"{WORK}/sources/{{source}}/shards/{{n}}/{{shard}}.faces.images.parquet",
        stats=f"{WORK}/sources/{{source}}/shards/{{n}}/{{shard}}.faces.stats.json",
    wildcard_constraints:
        n=r"\d+",
        shard=r"\d+",
    params:
        backend=lambda w: src(w).settings["backend"],
        settings=embed_result_settings,
        schema_version=SCHEMA_VERSION,
        store=f"{WORK}/store",
        model_dir=str(WF.model_dir),
        host=embed_host_args,
    threads: embed_threads
    resources:
        mem_mb=4000,
    log:
        f"{WORK}/logs/embed/{{source}}.{{n}}.{{shard}}.log",
    conda:
        "../envs/facesets.yaml"
    shell:
        "{params.host.launcher} embed {params.host.listing:q} {params.host.faces:q} --source {wildcards.source}"
        " --shard {wildcards.shard}/{wildcards.n} --providers {params.host.providers}"
        " --backend {params.backend} --store {params.host.store:q} --model-dir {params.host.model_dir:q}"
        " {params.host.path_map:q} --embed-settings {params.host.settings:q} --workers {threads}"
        " --plain-progress --progress-fd 3 3>&2 2> {log:q}"


rule embed:
    input:
        embed_shard_tables,
    output:
        faces=f"{WORK}/sources/{{source}}/faces.parquet",
        images=f"{WORK}/sources/{{source}}/faces.images.parquet",
        stats=f"{WORK}/sources/{{source}}/faces.stats.json",
    log:
        f"{WORK}/logs/embed/{{source}}.merge.log",
    conda:
        "../envs/facesets.yaml"
    shell:
        "facesets merge-shards {output.faces:q} {input:q} 2> {log:q}"


rule embed_summary:
    input:
        all_face_tables(),
    output:
        f"{WORK}/reports/embed_summary.txt",
    log:
        f"{WORK}/logs/embed_summary.log",
    conda:
        "../envs/facesets.yaml"
    shell:
        "facesets summary {input:q} > {output:q} 2> {log:q}"
