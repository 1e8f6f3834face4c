"""Snakemake entry: near-duplicate clusters and components of every item, from the shards' pair-search tiles."""
from trainset.stages import group

i, o, p = snakemake.input, snakemake.output, snakemake.params
group.run(
    i.ingest, i.audit, o.groups, o.pairs, o.reference, dict(p.near_dup), p.cache, p.stats, seed=p.seed,
    tiles={"pairs": list(i.pairs), "reference": list(i.reference), "stats": [*i.stats, *i.embed_stats]}, kept=p.kept,
)
