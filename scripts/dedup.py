"""Snakemake entry: one item kept per cluster among the items policy allowed."""
from trainset.stages import dedup

o = snakemake.output
dedup.run(snakemake.input[0], o.kept, o.clusters, o.rejected)
