"""Snakemake entry: materialize the built-in demo source."""
from pathlib import Path

from trainset import demo

if snakemake.params.enabled:
    demo.materialize(snakemake.output[0])
else:
    Path(snakemake.output[0]).mkdir(parents=True, exist_ok=True)
