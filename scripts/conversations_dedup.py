"""Snakemake entry: decontaminate against evaluation sets, then exact, near and semantic dedup."""
from trainset.conversations import stages

p = snakemake.params
stages.deduplicate(snakemake.input.kept, list(snakemake.input.eval), snakemake.output.kept, snakemake.output.rejected,
                   dict(p.dedup), p.index, p.cache, p.stats, signature_paths=list(snakemake.input.signatures))
