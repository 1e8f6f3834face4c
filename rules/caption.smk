# Snakemake weighs a job after a checkpoint (its params, code, input times) only once the checkpoint has
# run in the same invocation. So the deal also takes what the caption jobs depend on besides their part
# (caption params, trigger words, tag dictionaries, code): any change to it reruns the deal, a cheap
# copy of row groups, and then each caption job reruns on its own triggers.
checkpoint deal_deduped:
    input:
        manifest=DEDUPED,
        checkpoint=SHARDS_DEALT,
        dictionaries=config["tags"]["dictionaries"],
    output:
        parts=directory(DEDUPED_PARTS),
        index=DEDUPED_INDEX,
    params:
        map=SHARD_MAP,
        shards=lambda w: sorted(shard_index()),
        schema="DEDUPED",
        parts=f"{CACHE}/parts/deduped",  # each shard's file by content: unchanged shards are linked, not written
        footer=str(ts_parquet_splice.saved_footer(f"{CACHE}/kept/deduped.parquet", "output-footer")),  # the manifest's footer, as dedup wrote it
        caption=config["caption"],
        triggers=CAPTION_TRIGGERS,
        code=CODE,
    resources:
        **STEP_RESOURCES,
    script:
        "../scripts/deal.py"


rule caption_shard:
    input:
        deduped_part,
        checkpoint=DEDUPED_DEALT,
        index=ancient(DEDUPED_INDEX),  # read by the digest param: an input, so remote storage keeps its local copy
        dictionaries=config["tags"]["dictionaries"],
    output:
        f"{SHARDS}/captioned/{{shard}}.parquet",
    params:
        digest=deduped_digest,
        caption=config["caption"],
        cache=f"{CACHE}/background",
        kept=f"{CACHE}/parts/captioned",  # a shard's captions by what they depend on: a shard whose kept rows did not change links them
        triggers=CAPTION_TRIGGERS,
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
        kept=f"{CACHE}/kept/captioned.parquet",  # the last captioned manifest: a shard whose file did not change is copied from it
        code=CODE,
    resources:
        **STEP_RESOURCES,
    script:
        "../scripts/caption_gather.py"
