"""Snakemake entry: the ingest manifest dealt into stable shards (one per-item job each)."""
from trainset import shards

o, p = snakemake.output, snakemake.params
shards.split_ingest(snakemake.input[0], o.ingest, o.index, p.map, p.size, p.parts)
