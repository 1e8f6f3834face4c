"""Snakemake entry: captions from tags."""
from trainset.stages import caption

caption.run(snakemake.input.deduped, snakemake.output[0], dict(snakemake.params.caption), list(snakemake.input.dictionaries))
