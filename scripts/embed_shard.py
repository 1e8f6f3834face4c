"""Snakemake entry: one shard's image embeddings (for the near-duplicate rule's cosine clauses)."""
from trainset.stages import pairs

i, o, p = snakemake.input, snakemake.output, snakemake.params
pairs.embed(i.ingest, i.audit, o.embeddings, o.stats, dict(p.near_dup), p.cache, seed=p.seed, threads=snakemake.threads)
