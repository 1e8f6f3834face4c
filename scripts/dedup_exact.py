"""Snakemake entry: exact deduplication by SHA-256."""
from trainset.stages import dedup

dedup.run_exact(snakemake.input[0], snakemake.output.kept, snakemake.output.rejected)
