"""Snakemake entry: the HTML report folder and the DVC plots data."""
from pathlib import Path

from trainset.stages import html_report

p = snakemake.params
# the plots' folder as the job sees it (a default storage provider such as S3 hands it a local copy elsewhere)
plots_dir = Path(snakemake.output.plots[0]).parent
result = html_report.run(
    dict(snakemake.input.items()), snakemake.output.html, plots_dir, p.cache_dir,
    html_params=dict(p.html), thresholds=dict(p.thresholds), conversation_thresholds=dict(p.thresholds.get("conversations") or {}),
    balance_params=dict(p.balance), max_tokens=int(p.max_tokens), nsfw_action=str(p.nsfw_action),
)
print(f"html report: {result['made']} thumbnails made, {result['reused']} reused, {result['hidden']} contents never shown")
