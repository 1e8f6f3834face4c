"""Snakemake entry: the conversation report and metrics, GO/NO-GO."""
from trainset.conversations import report

paths = dict(snakemake.input.items())
report.run(paths, snakemake.output.report, snakemake.output.metrics, dict(snakemake.params.thresholds))
