# dedup: listing + face table -> byte-identical and visual near-duplicate groups
# Per-photo hashes and pair verdicts are cached under {WORK}/cache/dedup (not an output): a rerun hashes
# new photos and verifies new pairs only.
rule dedup:
    input:
        faces=f"{WORK}/sources/{{source}}/faces.parquet",
        listing=f"{WORK}/sources/{{source}}/listing.parquet",
    output:
        duplicates=f"{WORK}/sources/{{source}}/duplicates.json",
    params:
        settings=section_json("dedup"),
        cache=f"{WORK}/cache/dedup",
    threads: section_threads("dedup")
    log:
        f"{WORK}/logs/dedup/{{source}}.log",
    conda:
        "../envs/facesets.yaml"
    shell:
        "facesets dedup {input.faces:q} --out {output.duplicates:q} --listing {input.listing:q}"
        " --cache-dir {params.cache:q} --dedup-settings {params.settings:q} --workers {threads} 2> {log:q}"
