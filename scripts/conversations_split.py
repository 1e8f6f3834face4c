"""Snakemake entry: train/eval by thread, decontaminated, staged into the curriculum."""
from trainset.conversations import stages

p = snakemake.params
stages.split_and_stage(snakemake.input.kept, snakemake.output.split, snakemake.output.stages, snakemake.output.rejected,
                       dict(p.split), dict(p.curriculum), int(p.seed))
