rule group:
    input:
        ingest=INGEST,
        audit=AUDIT,
    output:
        groups=GROUPS,
        pairs=PAIRS,
    params:
        max_distance=config["near_dup"]["max_distance"],
        code=CODE,
    script:
        "../scripts/group.py"


rule dedup:
    input:
        FILTERED,
    output:
        kept=DEDUPED,
        clusters=CLUSTERS,
        rejected=f"{M}/rejected/dedup.parquet",
    params:
        code=CODE,
    script:
        "../scripts/dedup.py"
