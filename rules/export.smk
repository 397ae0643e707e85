# export: face sets -> single-face 512px crops, roop-unleashed bundles (<set>_top30.fsz,
# <set>_all.fsz), per-set and top-level manifest.json, _candidates/ (facesets/export.py).
# Finished crops are cached by content in {WORK}/cache/crops (a cache, not an output), so a
# rerun after new photos crops only new faces. export.workers is not a rerun trigger.
rule export:
    input:
        faces=f"{WORK}/sources/{{source}}/faces.parquet",
        quality=f"{WORK}/sources/{{source}}/quality.parquet",
        duplicates=f"{WORK}/sources/{{source}}/duplicates.json",
        refine=f"{OUTPUT}/refine/{{source}}",
        raw=f"{OUTPUT}/raw/{{source}}",
    output:
        directory(f"{OUTPUT}/export/{{source}}"),
    params:
        export=lambda w: export_args(src(w).settings),
        candidates=lambda w: "--candidates" if src(w).settings["export"]["candidates"] else "--no-candidates",
    threads: section_threads("export")
    log:
        f"{WORK}/logs/export/{{source}}.log",
    conda:
        "../envs/facesets.yaml"
    shell:
        "facesets export-swap {input.faces:q} {input.refine:q}/refine_manifest.json {output:q}"
        " --raw-manifest {input.raw:q}/manifest.json {params.candidates}"
        " --quality {input.quality:q} --duplicates {input.duplicates:q}"
        " {params.export} --workers {threads} 2> {log:q}"
