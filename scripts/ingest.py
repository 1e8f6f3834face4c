"""Snakemake entry: ingest every source into one manifest."""
from pathlib import Path

from trainset.config import MATERIALIZED_DIR, sources_from_params
from trainset.stages import ingest

p = snakemake.params
# the demo is made again from its flag; every other source from its entry (materialized ones included)
sources = sources_from_params({"demo": "demo" in p.built, "sources": [d for d in p.sources if d["name"] != "demo"]}, ".")
ingest.run(sources, snakemake.output.ingest, p.stat_cache, p.extensions, root=".", unmatched_out=snakemake.output.unmatched)
Path(MATERIALIZED_DIR).mkdir(parents=True, exist_ok=True)  # DVC tracks it, even with no such source
