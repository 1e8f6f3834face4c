"""Snakemake entry: one shard's captions from tags, background tags checked against the pixels."""
import json

from trainset.stages import caption

p, i, shard = snakemake.params, snakemake.input, snakemake.wildcards.shard
with open(i.index) as f:
    digest = json.load(f)[shard]["digest"]
dictionaries = list(i.dictionaries)
kept = caption.kept_as(p.kept, shard, digest, dict(p.caption), dictionaries, dict(p.triggers), p.code)
caption.run(f"{i.dealt}/{shard}.parquet", snakemake.output[0], dict(p.caption), dictionaries, p.cache, dict(p.triggers), kept)
