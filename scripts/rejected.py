"""Snakemake entry: the one rejected manifest."""
from trainset.stages import rejected

rejected.run(list(snakemake.input), snakemake.output[0])
