"""Snakemake entry: near-duplicate pairs, clusters and components of every item, and reference-set matches."""
from trainset.stages import group

i, o, p = snakemake.input, snakemake.output, snakemake.params
group.run(
    i.ingest, i.audit, o.groups, o.pairs, o.reference, dict(p.near_dup), p.cache, p.stats,
    seed=p.seed, threads=snakemake.threads, extensions=p.extensions, max_pixels=p.max_pixels,
)
