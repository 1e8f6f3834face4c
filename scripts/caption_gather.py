"""Snakemake entry: the captioned manifest from the shards' (one caption job per shard)."""
from trainset import manifest, schemas, shards

manifest.write(shards.concat(list(snakemake.input), schemas.CAPTIONED), snakemake.output[0], schemas.CAPTIONED)
