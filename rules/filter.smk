rule filter:
    input:
        ingest=INGEST,
        ingest_shards=per_shard(f"{SHARDS}/ingest/{{shard}}.parquet"),  # each shard's ingest rows: the audit is read by shard
        audit=AUDIT,
        groups=GROUPS,
        nsfw=NSFW,
        dictionaries=config["tags"]["dictionaries"],
        annotations=config["annotations"],
        overrides=[config["overrides"]] if config["overrides"] else [],
        takedown=TAKEDOWN,
    output:
        kept=FILTERED,
        rejected=f"{M}/rejected/filter.parquet",
    params:
        audit=config["audit"],
        policy=config["policy"],
        kept=f"{CACHE}/kept",  # the last outputs: a shard whose inputs did not change is copied from them
        code=CODE,
    resources:
        **STEP_RESOURCES,
    script:
        "../scripts/filter.py"
