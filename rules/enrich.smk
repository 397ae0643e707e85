# enrich: face table (+ image records for capture times) -> per-face quality table
# The enrich cache under {WORK}/cache/enrich is not an output: a rerun computes only new faces.
rule enrich:
    input:
        faces=f"{WORK}/sources/{{source}}/faces.parquet",
        images=f"{WORK}/sources/{{source}}/faces.images.parquet",
    output:
        quality=f"{WORK}/sources/{{source}}/quality.parquet",
    params:
        settings=section_json("enrich"),
        embed=lambda w: json.dumps({"insightface": src(w).settings["embed"]["insightface"]}, sort_keys=True),
        cache=f"{WORK}/cache/enrich",
    threads: section_threads("enrich")
    log:
        f"{WORK}/logs/enrich/{{source}}.log",
    conda:
        "../envs/facesets.yaml"
    shell:
        "facesets enrich {input.faces:q} --out {output.quality:q} --images {input.images:q}"
        " --cache-dir {params.cache:q} --enrich-settings {params.settings:q} --embed-settings {params.embed:q}"
        " --workers {threads} 2> {log:q}"
