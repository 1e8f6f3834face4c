"""Snakemake entry: the captioned manifest from the shards' (one caption job per shard), written by shard."""
from trainset import schemas, shards

shards.gather(list(snakemake.input), snakemake.output[0], schemas.CAPTIONED, snakemake.params.kept)
