"""Snakemake entry: decode and measure every distinct content of one shard (cached)."""
from trainset.stages import audit

p = snakemake.params
audit.run(snakemake.input[0], snakemake.output.audit, p.cache, snakemake.output.stats, params={"max_pixels": p.max_pixels},
          threads=snakemake.threads, hashes_out=snakemake.output.hashes)
