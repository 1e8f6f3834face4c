"""Snakemake entry: reject what cannot be trained on."""
from trainset.stages import filter as filter_stage

filter_stage.run(snakemake.input.ingest, snakemake.input.audit, snakemake.output.kept, snakemake.output.rejected, snakemake.params.min_side)
