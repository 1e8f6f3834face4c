rule filter:
    input:
        ingest=INGEST,
        audit=AUDIT,
    output:
        kept=FILTERED,
        rejected=f"{M}/rejected/filter.parquet",
    params:
        min_side=config["audit"]["min_side"],
        code=CODE,
    script:
        "../scripts/filter.py"
