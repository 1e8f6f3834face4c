"""Snakemake entry: the dataset report and metrics, GO/NO-GO."""
from trainset.stages import report

paths = dict(snakemake.input.items())
paths["export"] = f"{paths['export']}/manifest.parquet"
p = snakemake.params
report.run(paths, snakemake.output.report, snakemake.output.metrics, dict(p.thresholds), balance_params=dict(p.balance), audit_params=dict(p.audit))
