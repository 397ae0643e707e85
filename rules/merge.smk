# manifest-merge: every source's export (then the era splits) -> the canonical library facesets_swap_ready/
# (manifest.json + the identity ledger beside it). update(): the two files are changed in
# place (backed up first), never deleted: they hold the user's identity numbers.


rule manifest_merge:
    input:
        exports=all_exports(),
        eras=all_eras(),
        faces=all_face_tables(),
        decisions=decisions_input(),
    output:
        manifest=update(f"{OUTPUT}/facesets_swap_ready/manifest.json"),
        ledger=update(f"{OUTPUT}/facesets_swap_ready/ledger.json"),
    params:
        swap_ready=lambda w, output: os.path.dirname(output.manifest),
        exports=lambda w: " ".join(f"--export {n}={OUTPUT}/export/{n}" for n in source_names()),
        eras=lambda w: " ".join(f"--eras {n}={OUTPUT}/eras/{n}" for n in config["eras"]["identities"]),
        faces=lambda w: " ".join(f"--faces {t}" for t in all_face_tables()),
        top_n=config["export"]["top_n"],
        backups=config["merge"]["backups"],
        lock_timeout=config["merge"]["lock_timeout"],
        # a new discovered identity needs its source's refine.min_faces photos in the library
        min_faces=lambda w: " ".join(
            f"--min-faces {s.name}={s.settings['refine']['min_faces']}" for s in WF.sources
        ),
        dedup=json.dumps(config["dedup"], sort_keys=True),
        decisions=config["decisions"],
    log:
        f"{WORK}/logs/manifest_merge.log",
    conda:
        "../envs/facesets.yaml"
    shell:
        "facesets manifest-merge {params.swap_ready:q} {params.exports} {params.eras} {params.faces}"
        " {params.min_faces} --dedup-settings {params.dedup:q} --lock-timeout {params.lock_timeout}"
        " --decisions {params.decisions:q}"
        " --top-n {params.top_n} --backups {params.backups} 2> {log:q}"
