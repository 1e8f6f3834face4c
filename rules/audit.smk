rule audit:
    input:
        INGEST,
    output:
        AUDIT,
    params:
        cache=f"{CACHE}/features",
        stats=f"{RUN}/audit-stats.json",
        max_pixels=config["audit"]["max_pixels"],  # the one audit param that changes a decode
        code=CODE,
    threads: workflow.cores
    script:
        "../scripts/audit.py"


rule nsfw_score:
    input:
        ingest=INGEST,
        audit=AUDIT,
    output:
        NSFW,
    params:
        model=config["nsfw_model"],
        cache=f"{CACHE}/nsfw",
        code=CODE,
    threads: workflow.cores
    script:
        "../scripts/nsfw_score.py"
