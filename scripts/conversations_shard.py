"""Snakemake entry: the filtered conversations dealt into stable shards (one signing job each)."""
from trainset.conversations import stages

o, p = snakemake.output, snakemake.params
stages.deal_shards(snakemake.input[0], o.filtered, o.index, p.map, p.size)
