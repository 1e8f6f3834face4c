from trainset.sources.image_folder import fingerprint_folder


rule group:
    input:
        ingest=INGEST,
        audit=AUDIT,
    output:
        groups=GROUPS,
        pairs=PAIRS,
        reference=REFERENCE_PAIRS,
    params:
        near_dup=config["near_dup"],
        seed=config["seed"],
        cache=CACHE,
        stats=f"{RUN}/group-stats.json",
        extensions=config["ingest"]["extensions"],
        max_pixels=config["audit"]["max_pixels"],
        # reference folders are not rule outputs: their listing triggers reruns
        references=[fingerprint_folder(r["path"], config["ingest"]["extensions"]) for r in config["near_dup"].get("reference") or []],
        code=CODE,
    threads: workflow.cores
    script:
        "../scripts/group.py"


rule dedup:
    input:
        filtered=FILTERED,
        pairs=PAIRS,
        reference=REFERENCE_PAIRS,
    output:
        kept=DEDUPED,
        clusters=CLUSTERS,
        rejected=f"{M}/rejected/dedup.parquet",
    params:
        near_dup=config["near_dup"],
        code=CODE,
    script:
        "../scripts/dedup.py"
