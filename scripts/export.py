"""Snakemake entry: Kohya folders, dataset_config.toml, manifest and attribution."""
from trainset.stages import export

p = snakemake.params
params = {**dict(p.export), "caption": dict(p.caption), "source_triggers": dict(p.triggers), "seed": p.seed}
# with a default storage provider (S3) the output is a local copy under .snakemake/storage/: the Kohya
# configs still name the export by its path in the workflow
export.run(snakemake.input[0], snakemake.output[0], params, named_as=p.path)
