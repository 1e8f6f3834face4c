checkpoint shard:
    input:
        INGEST,
    output:
        ingest=directory(f"{SHARDS}/ingest"),
        index=SHARD_INDEX,
    params:
        map=SHARD_MAP,
        size=SHARD["size"],
        parts=f"{CACHE}/parts/ingest",  # each shard's file by content: unchanged shards are linked, not written
        code=CODE,
    resources:
        **STEP_RESOURCES,
    script:
        "../scripts/shard.py"


rule audit_shard:
    input:
        ancient(f"{SHARDS}/ingest/{{shard}}.parquet"),
        checkpoint=SHARDS_DEALT,
    output:
        audit=f"{SHARDS}/audit/{{shard}}.parquet",
        hashes=f"{SHARDS}/hashes/{{shard}}.npz",  # the pair tiles' input
        stats=f"{SHARD_RUN}/audit/{{shard}}.json",
    params:
        digest=shard_digest,
        cache=f"{CACHE}/features",
        max_pixels=config["audit"]["max_pixels"],  # the one audit param that changes a decode
        code=CODE,
    threads: SHARD_THREADS
    resources:
        **SHARD_RESOURCES,
        gpu=SHARD["gpu"],  # pHashes (CuPy when a GPU is there)
    script:
        "../scripts/audit.py"


rule audit:
    input:
        audit=per_shard(f"{SHARDS}/audit/{{shard}}.parquet"),
        stats=per_shard(f"{SHARD_RUN}/audit/{{shard}}.json"),
    output:
        AUDIT,
    params:
        stats=f"{RUN}/audit-stats.json",
        kept=f"{CACHE}/kept/audit.parquet",  # the last audit manifest: a shard whose file did not change is copied from it
        code=CODE,
    resources:
        **STEP_RESOURCES,
    script:
        "../scripts/audit_gather.py"


rule nsfw_score:
    input:
        ingest=INGEST,
        audit=AUDIT,
    output:
        NSFW,
    params:
        model=config["nsfw_model"],
        cache=f"{CACHE}/nsfw",
        kept=f"{CACHE}/kept",  # the last scores: a shard whose audit rows and model did not change is copied from them
        code=CODE,
    threads: workflow.cores
    resources:
        **STEP_RESOURCES,
    script:
        "../scripts/nsfw_score.py"
