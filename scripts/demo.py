"""Snakemake entry: materialize the built-in demo source."""
from trainset import demo

demo.materialize(snakemake.output[0])
