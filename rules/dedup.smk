rule dedup_exact:
    input:
        FILTERED,
    output:
        kept=EXACT,
        rejected=f"{M}/rejected/exact.parquet",
    params:
        code=CODE,
    script:
        "../scripts/dedup_exact.py"


rule dedup_near:
    input:
        EXACT,
    output:
        kept=DEDUPED,
        pairs=PAIRS,
        clusters=CLUSTERS,
        rejected=f"{M}/rejected/near.parquet",
    params:
        max_distance=config["near_dup"]["max_distance"],
        code=CODE,
    script:
        "../scripts/dedup_near.py"
