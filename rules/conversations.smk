# conversations: raw -> read (one job per source) -> filtered (structure, quality gates) -> signed (MinHash, one
# job per shard) -> deduped (exact, near, semantic; decontaminated) -> split and staged -> exported -> reported.
from trainset.conversations import readers as conv_readers
from trainset.conversations import sources as conv_sources

CONV_PARAMS = config.get("conversations") or {}
CONV_DEMO = bool(CONV_PARAMS.get("demo", False))
CONV_SOURCES = {s.name: s for s in conv_sources.sources_from_params(config, ".")}
CONV_EVAL = {s.name: s for s in conv_sources.eval_sets_from_params(config, ".")}
CONV_DEMO_PATH = "data/raw/demo_conversations"
CONV_DEDUP = {**(CONV_PARAMS.get("dedup") or {}), "casefold": bool(CONV_PARAMS.get("casefold", True))}
# what a signature depends on (not the thresholds: changing one re-signs nothing)
CONV_SIGN = {"casefold": CONV_DEDUP["casefold"],
             "near": {k: v for k, v in (CONV_DEDUP.get("near") or {}).items() if k != "threshold"}}


def conv_files(source):
    """A source's files: listed at parse time so an edit to any of them reruns its read job."""
    if CONV_DEMO and str(source.path).startswith(CONV_DEMO_PATH):
        return [local(CONV_DEMO_PATH)]  # made by conversations_demo
    return [local(str(p)) for p in conv_readers.files(source)]


rule conversations_demo:
    output:
        local(directory(CONV_DEMO_PATH)),
    params:
        enabled=CONV_DEMO,
        code=provenance.code_digest("conversations.demo"),
    resources:
        **STEP_RESOURCES,
    script:
        "../scripts/conversations_demo.py"


rule conversations_read:
    input:
        lambda w: conv_files({**CONV_SOURCES, **CONV_EVAL}[w.source]),
    output:
        kept=f"{CONV}/read/{{source}}.parquet",
        rejected=f"{CONV}/read/{{source}}.rejected.parquet",
    params:
        source=lambda w: conv_sources.as_dict({**CONV_SOURCES, **CONV_EVAL}[w.source]),
        code=CODE,
    resources:
        **STEP_RESOURCES,
    script:
        "../scripts/conversations_read.py"


rule conversations_filter:
    input:
        read=[f"{CONV}/read/{name}.parquet" for name in CONV_SOURCES],
        takedown=TAKEDOWN,
    output:
        kept=CONV_FILTERED,
        scores=CONV_SCORES,
        rejected=f"{CONV}/rejected/filter.parquet",
    params:
        quality=CONV_PARAMS.get("quality") or {},
        casefold=bool(CONV_PARAMS.get("casefold", True)),
        cache=f"{CACHE}/conversations",
        stats=f"{RUN}/conversations-filter-stats.json",
        code=CODE,
    threads: workflow.cores
    resources:
        **STEP_RESOURCES,
    script:
        "../scripts/conversations_filter.py"


checkpoint conversations_shard:
    input:
        CONV_FILTERED,
    output:
        filtered=directory(f"{CONV_SHARDS}/filtered"),
        index=CONV_SHARD_INDEX,
    params:
        map=CONV_SHARD_MAP,
        size=SHARD["size"],
        code=CODE,
    resources:
        **STEP_RESOURCES,
    script:
        "../scripts/conversations_shard.py"


rule conversations_sign:
    input:
        ancient(f"{CONV_SHARDS}/filtered/{{shard}}.parquet"),
        checkpoint=CONV_SHARDS_DEALT,
    output:
        f"{CONV_SHARDS}/signatures/{{shard}}.npz",
    params:
        digest=conv_shard_digest,
        dedup=CONV_SIGN,
        code=CODE,
    threads: SHARD_THREADS
    resources:
        **SHARD_RESOURCES,
        gpu=SHARD["gpu"],  # MinHash (CuPy when a GPU is there)
    script:
        "../scripts/conversations_sign.py"


rule conversations_dedup:
    input:
        kept=CONV_FILTERED,
        eval=[f"{CONV}/read/{name}.parquet" for name in CONV_EVAL],
        signatures=conv_per_shard(f"{CONV_SHARDS}/signatures/{{shard}}.npz"),
    output:
        kept=CONV_DEDUPED,
        rejected=f"{CONV}/rejected/dedup.parquet",
    params:
        dedup=CONV_DEDUP,
        index=CONV_INDEX,
        cache=f"{CACHE}/conversations",
        stats=f"{RUN}/conversations-dedup-stats.json",
        code=CODE,
    threads: workflow.cores
    resources:
        **STEP_RESOURCES,
    script:
        "../scripts/conversations_dedup.py"


rule conversations_split:
    input:
        kept=CONV_DEDUPED,
    output:
        split=CONV_SPLIT,
        stages=CONV_STAGES,
        rejected=f"{CONV}/rejected/curriculum.parquet",
    params:
        split=CONV_PARAMS.get("split") or {},
        curriculum=CONV_PARAMS.get("curriculum") or {},
        seed=config["seed"],
        code=CODE,
    resources:
        **STEP_RESOURCES,
    script:
        "../scripts/conversations_split.py"


rule conversations_rejected:
    input:
        read=[f"{CONV}/read/{name}.parquet" for name in CONV_SOURCES],
        parts=[f"{CONV}/read/{name}.rejected.parquet" for name in CONV_SOURCES]
        + [f"{CONV}/rejected/{part}.parquet" for part in ("filter", "dedup", "curriculum")],
        kept=CONV_SPLIT,
    output:
        CONV_REJECTED,
    params:
        code=CODE,
    resources:
        **STEP_RESOURCES,
    script:
        "../scripts/conversations_rejected.py"


rule conversations_export:
    input:
        split=CONV_SPLIT,
        stages=CONV_STAGES,
        scores=CONV_SCORES,
        rejected=CONV_REJECTED,
    output:
        directory(CONV_EXPORT),
    params:
        curriculum=CONV_PARAMS.get("curriculum") or {},
        params_digest=provenance.params_digest({k: config.get(k) for k in ("seed", "conversations")}),
        seed=config["seed"],
        code=CODE,
    resources:
        **STEP_RESOURCES,
    script:
        "../scripts/conversations_export.py"


rule conversations_report:
    input:
        read=[f"{CONV}/read/{name}.parquet" for name in CONV_SOURCES],
        scores=CONV_SCORES,
        split=CONV_SPLIT,
        stages=CONV_STAGES,
        rejected=CONV_REJECTED,
        export=CONV_EXPORT,
    output:
        report=CONV_REPORT,
        metrics=CONV_METRICS,
    params:
        thresholds=(config.get("report") or {}).get("conversations") or {},
        code=CODE,
    resources:
        **STEP_RESOURCES,
    script:
        "../scripts/conversations_report.py"
