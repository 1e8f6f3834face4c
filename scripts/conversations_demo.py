"""Snakemake entry: materialize the built-in demo conversations."""
from pathlib import Path

from trainset.conversations import demo

if snakemake.params.enabled:
    demo.materialize(snakemake.output[0])
else:
    Path(snakemake.output[0]).mkdir(parents=True, exist_ok=True)
