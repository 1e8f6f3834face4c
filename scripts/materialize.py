"""Snakemake entry: unpack an archive, Parquet or WebDataset source into its image folder."""
import json

from trainset import atomic
from trainset.config import sources_from_params
from trainset.sources import materialize

p = snakemake.params
source = sources_from_params({"sources": [dict(p.source)]}, ".")[0]
report = materialize.unpack(source, snakemake.output[0], dict(p.limits))
atomic.write_text(p.report, json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
