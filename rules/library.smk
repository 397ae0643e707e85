# identities / route: the refine step of the other source kinds. Each writes the same
# refine folder (sets + refine_manifest.json) as `refine` does for folder sources, so
# export and manifest-merge treat every kind alike.
#   identities (hand-sorted): one asserted identity per sub-folder
#   mixed/immich: route faces to known identities (ledger + sources listed earlier), discover the rest;
#   rerun when the ledger's identities change materially (route_state in common.smk)


rule identities:
    input:
        faces=f"{WORK}/sources/{{source}}/faces.parquet",
    output:
        directory(f"{OUTPUT}/refine/{{source}}"),
    wildcard_constraints:
        source=kind_constraint("identities"),
    params:
        link_mode=lambda w: src(w).settings["refine"]["link_mode"],
    log:
        f"{WORK}/logs/identities/{{source}}.log",
    conda:
        "../envs/facesets.yaml"
    shell:
        "facesets identities {input.faces:q} {output:q} --source {wildcards.source}"
        " --link-mode {params.link_mode} 2> {log:q}"


rule route:
    input:
        faces=f"{WORK}/sources/{{source}}/faces.parquet",
        quality=f"{WORK}/sources/{{source}}/quality.parquet",
        known=earlier_refines,
        # the ledger's identities as routing uses them (a state file: the ledger itself would be a
        # cycle, manifest-merge writes it after this rule ran); a grown library reroutes
        library=route_state,
    output:
        directory(f"{OUTPUT}/refine/{{source}}"),
    wildcard_constraints:
        source=kind_constraint("mixed", "immich"),
    params:
        known=lambda w: " ".join(f"--known {n}={OUTPUT}/refine/{n}" for n in earlier_sources(w)),
        # Read when it exists, not an input: manifest-merge writes it after this rule ran.
        ledger=f"{OUTPUT}/facesets_swap_ready/ledger.json",
        settings=section_json("refine"),
        cluster=section_json("cluster"),  # the engine (method, exact_max, knn) of discovery, as refine's
        link_mode=lambda w: src(w).settings["refine"]["link_mode"],
    log:
        f"{WORK}/logs/route/{{source}}.log",
    conda:
        "../envs/facesets.yaml"
    shell:
        "facesets route {input.faces:q} {output:q} --source {wildcards.source} --quality {input.quality:q}"
        " {params.known} --ledger {params.ledger:q} --refine-settings {params.settings:q}"
        " --cluster-settings {params.cluster:q}"
        " --link-mode {params.link_mode} 2> {log:q}"
