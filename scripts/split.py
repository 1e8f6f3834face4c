"""Snakemake entry: train/val/test per near-duplicate cluster."""
from trainset.stages import split

p = snakemake.params
split.run(snakemake.input[0], snakemake.output.split, snakemake.output.moves, p.history, p.seed, dict(p.fractions), kept=p.kept)
