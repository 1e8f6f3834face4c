rule deal_deduped:
    input:
        manifest=DEDUPED,
        checkpoint=SHARDS_DEALT,
    output:
        directory(f"{SHARDS}/deduped"),
    params:
        map=SHARD_MAP,
        shards=lambda w: sorted(shard_index()),
        schema="DEDUPED",
        code=CODE,
    script:
        "../scripts/deal.py"


rule caption_shard:
    input:
        dealt=f"{SHARDS}/deduped",
        dictionaries=config["tags"]["dictionaries"],
    output:
        f"{SHARDS}/captioned/{{shard}}.parquet",
    params:
        caption=config["caption"],
        cache=f"{CACHE}/background",
        triggers={s.name: s.trigger_word for s in SOURCES},
        code=CODE,
    threads: SHARD_THREADS
    resources:
        **SHARD_RESOURCES,
    script:
        "../scripts/caption.py"


rule caption:
    input:
        per_shard(f"{SHARDS}/captioned/{{shard}}.parquet"),
    output:
        CAPTIONED,
    params:
        code=CODE,
    script:
        "../scripts/caption_gather.py"
