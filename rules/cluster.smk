# cluster: face table -> raw clusters (person_NNN/, _singletons/, _noface/, manifest.json)
rule cluster:
    input:
        faces=f"{WORK}/sources/{{source}}/faces.parquet",
        images=f"{WORK}/sources/{{source}}/faces.images.parquet",
    output:
        directory(f"{OUTPUT}/raw/{{source}}"),
    params:
        settings=section_json("cluster"),
    log:
        f"{WORK}/logs/cluster/{{source}}.log",
    conda:
        "../envs/facesets.yaml"
    shell:
        "facesets cluster {input.faces:q} {output:q} --cluster-settings {params.settings:q} 2> {log:q}"
