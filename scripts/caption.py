"""Snakemake entry: one shard's captions from tags, background tags checked against the pixels."""
from trainset.stages import caption

p, i, shard = snakemake.params, snakemake.input, snakemake.wildcards.shard
dictionaries = list(i.dictionaries)
kept = caption.kept_as(p.kept, shard, p.digest, dict(p.caption), dictionaries, dict(p.triggers), p.code)
caption.run(i[0], snakemake.output[0], dict(p.caption), dictionaries, p.cache, dict(p.triggers), kept)
