"""Snakemake entry: per-stage JSONL and Parquet exports with their manifest."""
from trainset.conversations import stages

p = snakemake.params
stages.export(snakemake.input.split, snakemake.input.stages, snakemake.input.scores, snakemake.output[0],
              dict(p.curriculum), int(p.seed), p.params_digest)
