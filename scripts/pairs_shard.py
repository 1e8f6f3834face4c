"""Snakemake entry: one shard's near-duplicate pair-search tile (against itself and every earlier shard)."""
from trainset.stages import pairs

i, o, p = snakemake.input, snakemake.output, snakemake.params
pairs.run(
    list(i.hashes), list(i.embeddings) or None, o.pairs, o.reference, o.stats, dict(p.near_dup), p.cache,
    seed=p.seed, threads=snakemake.threads, extensions=p.extensions, max_pixels=p.max_pixels,
)
