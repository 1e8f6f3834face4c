"""Snakemake entry: the audit manifest from the shards'."""
from trainset.stages import audit

audit.gather(snakemake.input.audit, snakemake.input.stats, snakemake.output[0], snakemake.params.stats, snakemake.params.kept)
