"""Snakemake entry: a global manifest dealt out by shard, for per-shard jobs after a global step."""
from trainset import schemas, shards

p = snakemake.params
shards.deal(snakemake.input.manifest, p.map, list(p.shards), snakemake.output[0], getattr(schemas, p.schema))
