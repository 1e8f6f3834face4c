"""Snakemake entry: a global manifest dealt out by shard, for per-shard jobs after a global step."""
from trainset import schemas, shards

p = snakemake.params
o = snakemake.output
shards.deal(snakemake.input.manifest, p.map, list(p.shards), o.parts, getattr(schemas, p.schema), o.index, p.parts, p.footer)
