# refine: face table + quality table -> proposed face sets (faceset_NNN/ + refine_manifest.json)
# initial clustering -> centroid merge -> quality gate -> outlier rejection -> size filter;
# distances from the embedding model's profile unless refine.* sets them (facesets/refine.py).
rule refine:
    input:
        faces=f"{WORK}/sources/{{source}}/faces.parquet",
        quality=f"{WORK}/sources/{{source}}/quality.parquet",
    output:
        directory(f"{OUTPUT}/refine/{{source}}"),
    wildcard_constraints:
        source=kind_constraint("folder"),  # other kinds: rules/library.smk (identities, route)
    params:
        settings=section_json("refine"),
        cluster=section_json("cluster"),
    log:
        f"{WORK}/logs/refine/{{source}}.log",
    conda:
        "../envs/facesets.yaml"
    shell:
        "facesets refine {input.faces:q} {output:q} --quality {input.quality:q}"
        " --refine-settings {params.settings:q} --cluster-settings {params.cluster:q} 2> {log:q}"
