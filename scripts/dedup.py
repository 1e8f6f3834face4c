"""Snakemake entry: one copy kept per near-duplicate cluster among the items policy allowed."""
from trainset.stages import dedup

i, o = snakemake.input, snakemake.output
dedup.run(i.filtered, i.pairs, i.reference, o.kept, o.clusters, o.rejected, dict(snakemake.params.near_dup),
          kept=snakemake.params.kept)
