"""Snakemake entry: read one conversation source (or evaluation set) into the one schema."""
from trainset.conversations import stages

stages.read(dict(snakemake.params.source), snakemake.output.kept, snakemake.output.rejected)
