"""Snakemake entry: one shard's captions from tags, background tags checked against the pixels."""
from trainset.stages import caption

p = snakemake.params
caption.run(f"{snakemake.input.dealt}/{snakemake.wildcards.shard}.parquet", snakemake.output[0], dict(p.caption),
            list(snakemake.input.dictionaries), p.cache, dict(p.triggers))
