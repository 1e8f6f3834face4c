"""Snakemake entry: decode and measure every distinct content (cached)."""
from trainset.stages import audit

audit.run(snakemake.input[0], snakemake.output[0], snakemake.params.cache, snakemake.params.stats, params={"max_pixels": snakemake.params.max_pixels}, threads=snakemake.threads)
