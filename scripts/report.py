"""Snakemake entry: the dataset report and metrics, GO/NO-GO."""
from trainset.stages import report

paths = dict(snakemake.input.items())
paths["export"] = f"{paths['export']}/manifest.parquet"
report.run(paths, snakemake.output.report, snakemake.output.metrics, dict(snakemake.params.thresholds), snakemake.params.max_distance)
