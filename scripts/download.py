"""Snakemake entry: fetch a URL-list source into its image folder (networking must be enabled in params)."""
import json

from trainset import atomic
from trainset.config import sources_from_params
from trainset.sources import materialize

p = snakemake.params
source = sources_from_params({"sources": [dict(p.source)]}, ".")[0]
report = materialize.download(source, p.folder, dict(p.network))
atomic.write_text(snakemake.output[0], json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
