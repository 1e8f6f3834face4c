"""Snakemake entry: ingest every source into one manifest."""
from trainset.config import sources_from_params
from trainset.stages import ingest

p = snakemake.params
sources = [s for s in sources_from_params({"demo": bool(p.built), "sources": [d for d in p.sources if d["name"] not in p.built]}, ".")]
ingest.run(sources, snakemake.output.ingest, p.stat_cache, p.extensions, root=".", unmatched_out=snakemake.output.unmatched)
