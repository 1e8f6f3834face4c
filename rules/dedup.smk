from trainset import neardup as ts_neardup
from trainset.sources.image_folder import fingerprint_folder


NEAR_RULE = ts_neardup.Rule.from_params(config["near_dup"], config["seed"])
# reference folders are not rule outputs: their listing triggers reruns
REFERENCES = [fingerprint_folder(r["path"], config["ingest"]["extensions"]) for r in config["near_dup"].get("reference") or []]


rule embed_shard:
    input:
        ingest=ancient(f"{SHARDS}/ingest/{{shard}}.parquet"),
        audit=f"{SHARDS}/audit/{{shard}}.parquet",
        checkpoint=SHARDS_DEALT,
    output:
        embeddings=f"{SHARDS}/embeddings/{{shard}}.parquet",
        stats=f"{SHARD_RUN}/embeddings/{{shard}}.json",
    params:
        digest=shard_digest,
        near_dup=config["near_dup"],
        seed=config["seed"],
        cache=CACHE,
        code=CODE,
    threads: SHARD_THREADS
    resources:
        **SHARD_RESOURCES,
        gpu=SHARD["gpu"],
    script:
        "../scripts/embed_shard.py"


def shards_upto(pattern):
    """Input function of a pair-search tile: the pattern for every shard up to this one, this one last."""
    return lambda w: [pattern.format(shard=s) for s in ts_shard_plan.upto(shard_index(), w.shard)]


def tile_digests(index, shard):
    """The digests of the shards a tile compares (the index read once, not once per shard)."""
    return [index[s]["digest"] for s in ts_shard_plan.upto(index, shard)]


rule pairs_shard:
    input:
        hashes=shards_upto(f"{SHARDS}/hashes/{{shard}}.npz"),
        embeddings=shards_upto(f"{SHARDS}/embeddings/{{shard}}.parquet") if NEAR_RULE.uses_cosine else [],
        checkpoint=SHARDS_DEALT,
    output:
        pairs=f"{SHARDS}/pairs/{{shard}}.parquet",
        reference=f"{SHARDS}/reference/{{shard}}.parquet",
        stats=f"{SHARD_RUN}/pairs/{{shard}}.json",
    params:
        # this shard and every one it is compared with: a tile reruns when any of them changed
        digests=lambda w: tile_digests(shard_index(), w.shard),
        near_dup=config["near_dup"],
        seed=config["seed"],
        cache=CACHE,
        extensions=config["ingest"]["extensions"],
        max_pixels=config["audit"]["max_pixels"],
        references=REFERENCES,
        code=CODE,
    threads: SHARD_THREADS
    resources:
        **SHARD_RESOURCES,
        gpu=SHARD["gpu"],  # Hamming and cosine pair search (CuPy when a GPU is there)
    script:
        "../scripts/pairs_shard.py"


rule group:
    input:
        ingest=INGEST,
        audit=AUDIT,
        pairs=per_shard(f"{SHARDS}/pairs/{{shard}}.parquet"),
        reference=per_shard(f"{SHARDS}/reference/{{shard}}.parquet"),
        stats=per_shard(f"{SHARD_RUN}/pairs/{{shard}}.json"),
        embed_stats=per_shard(f"{SHARD_RUN}/embeddings/{{shard}}.json") if NEAR_RULE.uses_cosine else [],
    output:
        groups=GROUPS,
        pairs=PAIRS,
        reference=REFERENCE_PAIRS,
    params:
        near_dup=config["near_dup"],
        seed=config["seed"],
        cache=CACHE,
        stats=f"{RUN}/group-stats.json",
        kept=f"{CACHE}/kept",  # the last groups manifest: a shard whose audit rows and clusters did not change is copied from it
        code=CODE,
    resources:
        **STEP_RESOURCES,
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
        kept=f"{CACHE}/kept",  # the last deduped manifest: a shard whose rows and keepers did not change is copied from it
        code=CODE,
    resources:
        **STEP_RESOURCES,
    script:
        "../scripts/dedup.py"
