# report: what `snakemake --report report.html` shows after a run. First the library (one contact
# sheet per library identity under its number and name, an overview page with what the merge
# reported), then per source and face set a contact sheet of the exported crops with their
# quality scores; one page of run statistics. Categories sort by name: the numbers order them.
# Sheets are cached by a digest of what they draw (work/cache/sheets/), so a rerun after new
# photos draws only the sheets of sets that changed and links the rest (issue #18).
rule library_report:
    input:
        manifest=f"{OUTPUT}/facesets_swap_ready/manifest.json",
        ledger=f"{OUTPUT}/facesets_swap_ready/ledger.json",
    output:
        sheets=report(
            directory(f"{OUTPUT}/report/library/contact_sheets"),
            patterns=["{identity}.png"],
            caption="../report/library_sheet.rst",
            category="1. Library",
            subcategory="identities",
            labels={"identity": "{identity}"},
        ),
        page=report(
            f"{OUTPUT}/report/library/library.html",
            caption="../report/library.rst",
            category="1. Library",
            subcategory="overview",
            labels={"page": "all identities"},
        ),
    params:
        swap_ready=lambda w, input: os.path.dirname(input.manifest),
        settings=lambda w: json.dumps(what_not_how_fast(config["report"]), sort_keys=True),
        # finished sheets by digest: only identities that changed are drawn again (not an output)
        cache=f"{WORK}/cache/sheets/_library",
    threads: lambda w: config["report"]["workers"] or workflow.cores
    log:
        f"{WORK}/logs/report/library.log",
    conda:
        "../envs/facesets.yaml"
    shell:
        "facesets library-report {params.swap_ready:q} {output.sheets:q} --page {output.page:q}"
        " --report-settings {params.settings:q} --cache {params.cache:q} --workers {threads} 2> {log:q}"


rule contact_sheets:
    input:
        export=f"{OUTPUT}/export/{{source}}",
    output:
        report(
            directory(f"{OUTPUT}/report/{{source}}/contact_sheets"),
            patterns=["{faceset}.png"],
            caption="../report/contact_sheet.rst",
            category="2. Face sets per source",
            subcategory="{source}",
            labels={"source": "{source}", "face set": "{faceset}"},
        ),
    params:
        settings=lambda w: json.dumps(what_not_how_fast(config["report"]), sort_keys=True),
        # finished sheets by digest: only face sets that changed are drawn again (not an output)
        cache=lambda w: f"{WORK}/cache/sheets/{w.source}",
    threads: lambda w: config["report"]["workers"] or workflow.cores
    log:
        f"{WORK}/logs/report/{{source}}.contact_sheets.log",
    conda:
        "../envs/facesets.yaml"
    shell:
        "facesets contact-sheets {input.export:q} {output:q} --report-settings {params.settings:q}"
        " --cache {params.cache:q} --workers {threads} 2> {log:q}"


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
            category="3. Run statistics",
            labels={"page": "all sources"},
        ),
        numbers=f"{OUTPUT}/report/run_stats.json",
    params:
        sources=lambda w, input: json.dumps(
            [
                {"name": n, "faces": f, "raw": r, "duplicates": d, "refine": m, "export": e}
                for n, f, r, d, m, e in zip(
                    source_names(), input.faces, input.raw, input.duplicates, input.refine, input.exports
                )
            ]
        ),
    log:
        f"{WORK}/logs/report/run_stats.log",
    conda:
        "../envs/facesets.yaml"
    shell:
        "facesets run-stats {output.page:q} --json {output.numbers:q} --sources {params.sources:q} 2> {log:q}"
