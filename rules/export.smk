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
        settings=lambda w: json.dumps(
            {k: v for k, v in src(w).settings["export"].items() if k != "workers"}, sort_keys=True
        ),
        candidates=lambda w: "--candidates" if src(w).settings["export"]["candidates"] else "--no-candidates",
        backend=lambda w: src(w).settings["backend"],
        redetect=lambda w: json.dumps(
            {b: src(w).settings["embed"][b] for b in ["insightface"] if src(w).settings["backend"] == b},
            sort_keys=True,
        ),
        model_dir=str(WF.model_dir),
        crop_cache=f"{WORK}/cache/crops",
    threads: lambda w: src(w).settings["export"]["workers"] or workflow.cores
    log:
        f"{WORK}/logs/export/{{source}}.log",
    conda:
        "../envs/facesets.yaml"
    shell:
        "facesets export-swap {input.faces:q} {input.refine:q}/refine_manifest.json {output:q}"
        " --raw-manifest {input.raw:q}/manifest.json {params.candidates}"
        " --quality {input.quality:q} --duplicates {input.duplicates:q}"
        " --export-settings {params.settings:q} --workers {threads}"
        " --backend {params.backend} --embed-settings {params.redetect:q}"
        " --model-dir {params.model_dir:q} --crop-cache {params.crop_cache:q} 2> {log:q}"
