"""Snakemake entry: optional NSFW classifier scores (all NaN when no model is configured)."""
from trainset.stages import nsfw

p = snakemake.params
nsfw.run(snakemake.input.ingest, snakemake.input.audit, snakemake.output[0], dict(p.model), p.cache, threads=snakemake.threads,
         kept=p.kept)
