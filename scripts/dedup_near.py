"""Snakemake entry: near-duplicate clusters by pHash Hamming distance."""
from trainset.stages import dedup

o = snakemake.output
dedup.run_near(snakemake.input[0], o.kept, o.pairs, o.clusters, o.rejected, snakemake.params.max_distance)
