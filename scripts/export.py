"""Snakemake entry: Kohya folders, dataset_config.toml, manifest and attribution."""
from trainset.stages import export

p = snakemake.params
export.run(snakemake.input[0], snakemake.output[0], {**dict(p.export), "caption": dict(p.caption), "source_triggers": dict(p.triggers), "seed": p.seed})
