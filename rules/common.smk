import json

from trainset import parquet_splice as ts_parquet_splice
from trainset import shard_plan as ts_shard_plan

# Paths shared by the rules: one place, so rules, scripts and dvc.yaml agree.

M = "data/manifests"
INGEST = f"{M}/ingest.parquet"
UNMATCHED = f"{M}/unmatched_records.parquet"
AUDIT = f"{M}/audit.parquet"
FILTERED = f"{M}/filtered.parquet"
GROUPS = f"{M}/groups.parquet"
NSFW = f"{M}/nsfw_scores.parquet"
DEDUPED = f"{M}/deduped.parquet"
PAIRS = f"{M}/pairs.parquet"
REFERENCE_PAIRS = f"{M}/reference_pairs.parquet"
CLUSTERS = f"{M}/clusters.parquet"
CAPTIONED = f"{M}/captioned.parquet"
SPLIT = f"{M}/split.parquet"
MOVES = f"{M}/split_moves.parquet"
REJECTED = f"{M}/rejected.parquet"
REJECTED_PARTS = [f"{M}/rejected/{part}.parquet" for part in ("filter", "dedup")]
EXPORT = "data/export"
REPORT = "data/report/dataset-report.md"
METRICS = "data/report/metrics.json"
HTML_REPORT = "data/report/html"  # index.html + thumbs/: opens from disk
PLOTS_DIR = "data/report/plots"   # DVC plots data (dvc plots diff)
PLOT_FILES = [f"{PLOTS_DIR}/{name}.csv" for name in distributions.PLOTS]
THUMBS = "data/cache/thumbs"      # thumbnails by content hash, made once
CACHE = "data/cache"
RUN = "data/run"

# conversations
CONV = "data/conversations"
CONV_SCORES = f"{CONV}/scores.parquet"
CONV_FILTERED = f"{CONV}/filtered.parquet"
CONV_DEDUPED = f"{CONV}/deduped.parquet"
CONV_INDEX = f"{CONV}/dedup-index"  # everything seen, so a new batch is checked against it; versioned with the data
CONV_SPLIT = f"{CONV}/split.parquet"
CONV_STAGES = f"{CONV}/stages.parquet"
CONV_REJECTED = f"{CONV}/rejected.parquet"
CONV_EXPORT = "data/export-conversations"
CONV_REPORT = "data/report/conversations-report.md"
CONV_METRICS = "data/report/conversations-metrics.json"
# content SHA-256s taken down (trainset purge): every build rejects them. A file of the repository (the
# scripts read it from the working directory), so local() even with a default storage provider (S3)
TAKEDOWN = local("takedown.txt")

# shards: per-item work runs once per shard (src/trainset/shards.py)
SHARDS = f"{M}/shards"
SHARD_INDEX = f"{SHARDS}/index.json"
SHARD_MAP = f"{M}/shard-map.parquet"  # which shard each content belongs to: kept across runs
SHARD_RUN = f"{RUN}/shards"           # per-shard stats
SHARD = ts_shard_plan.settings(config.get("shards"))
SHARD_THREADS = min(SHARD["threads"] or workflow.cores, workflow.cores)
# what a job asks a cluster for, times the attempt (--retries): a shard job params.yaml shards; every
# other job reads whole manifests, so its memory grows with its inputs' size (params.yaml resources)
SHARD_RESOURCES = ts_shard_plan.job_resources(SHARD)
STEP_RESOURCES = ts_shard_plan.job_resources(ts_shard_plan.step_settings(config.get("resources")))


# The checkpoint's folder, as an input of every job whose params read the index: a job run on its own
# (a cluster job step) meets the checkpoint as done only then. Ancient: the checkpoint rewrites it.
SHARDS_DEALT = ancient(f"{SHARDS}/ingest")


def shard_index():
    """shard -> {digest, items, contents}, known once the shard checkpoint ran. Read through open(): with a
    default storage provider (S3) Snakemake fetches the index's local copy first."""
    with checkpoints.shard.get().output.index.open() as f:
        return json.load(f)


def per_shard(*patterns):
    """Input function: every pattern filled in for every shard."""
    return lambda w: [p.format(shard=s) for s in sorted(shard_index()) for p in patterns]


def shard_digest(w):
    """The digest of a shard's ingest rows: its jobs rerun when it changes. The checkpoint rewrites every
    shard file, so the jobs read theirs as ancient (only the jobs reading a checkpoint's files: an
    ancient input made by an ordinary rule can leave jobs unrun after a checkpoint update in Snakemake 9)."""
    return shard_index()[w.shard]["digest"]


# the deduped manifest dealt out by shard (checkpoint deal_deduped), for the per-shard captions
DEDUPED_PARTS = f"{SHARDS}/deduped"
DEDUPED_INDEX = f"{SHARDS}/deduped-index.json"  # shard -> digest of its kept rows
DEDUPED_DEALT = ancient(DEDUPED_PARTS)  # as SHARDS_DEALT, for the deal_deduped checkpoint
CAPTION_TRIGGERS = {s.name: s.trigger_word for s in SOURCES}  # a source's own trigger word, by source name


def deduped_part(w):
    """A shard's part of the deal, once the deal ran (until then Snakemake waits on the checkpoint)."""
    checkpoints.deal_deduped.get()
    return ancient(f"{DEDUPED_PARTS}/{w.shard}.parquet")


def deduped_digest(w):
    """The digest of a shard's kept rows: its caption job reruns only when it changes (as shard_digest),
    so after a global dedup that changed a few shards' rows only those shards are captioned again."""
    with checkpoints.deal_deduped.get().output.index.open() as f:
        return json.load(f)[w.shard]["digest"]


# conversation shards: dedup's MinHash signatures run once per shard (src/trainset/conversations/shards.py)
CONV_SHARDS = f"{CONV}/shards"
CONV_SHARD_INDEX = f"{CONV_SHARDS}/index.json"
CONV_SHARD_MAP = f"{CONV}/shard-map.parquet"  # which shard each conversation content belongs to: kept across runs
CONV_SHARDS_DEALT = ancient(f"{CONV_SHARDS}/filtered")  # as SHARDS_DEALT, for the conversations_shard checkpoint


def conv_shard_index():
    """shard -> {digest, items} of the filtered conversations, known once conversations_shard ran."""
    with checkpoints.conversations_shard.get().output.index.open() as f:
        return json.load(f)


def conv_per_shard(pattern):
    """Input function: the pattern filled in for every conversation shard."""
    return lambda w: [pattern.format(shard=s) for s in sorted(conv_shard_index())]


def conv_shard_digest(w):
    """The digest of a conversation shard's rows: its job reruns when it changes (as shard_digest)."""
    return conv_shard_index()[w.shard]["digest"]
