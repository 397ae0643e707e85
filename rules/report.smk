# report: what `snakemake --report report.html` shows after a run. Per source and face set a
# contact sheet of the exported crops with their quality scores; one page of run statistics.
rule contact_sheets:
    input:
        export=f"{OUTPUT}/export/{{source}}",
    output:
        report(
            directory(f"{OUTPUT}/report/{{source}}/contact_sheets"),
            patterns=["{faceset}.png"],
            caption="../report/contact_sheet.rst",
            category="Face sets",
            subcategory="{source}",
            labels={"source": "{source}", "face set": "{faceset}"},
        ),
    params:
        settings=lambda w: json.dumps(config["report"], sort_keys=True),
    log:
        f"{WORK}/logs/report/{{source}}.contact_sheets.log",
    conda:
        "../envs/facesets.yaml"
    shell:
        "facesets contact-sheets {input.export:q} {output:q} --report-settings {params.settings:q} 2> {log:q}"


rule run_stats:
    input:
        faces=all_face_tables(),
        raw=all_raw_clusters(),
        duplicates=expand(f"{WORK}/sources/{{source}}/duplicates.json", source=source_names()),
        refine=expand(f"{OUTPUT}/refine/{{source}}", source=source_names()),
        exports=all_exports(),
    output:
        page=report(
            f"{OUTPUT}/report/run_stats.html",
            caption="../report/run_stats.rst",
            category="Run statistics",
            labels={"page": "all sources"},
        ),
        numbers=f"{OUTPUT}/report/run_stats.json",
    params:
        sources=lambda w, input: " ".join(
            f"--source name={n},faces={f},raw={r},duplicates={d},refine={m},export={e}"
            for n, f, r, d, m, e in zip(
                source_names(), input.faces, input.raw, input.duplicates, input.refine, input.exports
            )
        ),
    log:
        f"{WORK}/logs/report/run_stats.log",
    conda:
        "../envs/facesets.yaml"
    shell:
        "facesets run-stats {output.page:q} --json {output.numbers:q} {params.sources} 2> {log:q}"
