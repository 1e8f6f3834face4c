rule audit:
    input:
        INGEST,
    output:
        AUDIT,
    params:
        cache=f"{CACHE}/features",
        stats=f"{RUN}/audit-stats.json",
        code=CODE,
    threads: workflow.cores
    script:
        "../scripts/audit.py"
