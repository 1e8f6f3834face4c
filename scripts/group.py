"""Snakemake entry: exact-duplicate groups and near-duplicate clusters of every item."""
from trainset.stages import group

group.run(snakemake.input.ingest, snakemake.input.audit, snakemake.output.groups, snakemake.output.pairs, snakemake.params.max_distance)
