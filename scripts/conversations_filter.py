"""Snakemake entry: score every conversation (cached) and apply the quality gates."""
from trainset import versions
from trainset.conversations import stages

p = snakemake.params
stages.filter_conversations(list(snakemake.input.read), snakemake.output.kept, snakemake.output.scores, snakemake.output.rejected,
                            dict(p.quality), p.cache, bool(p.casefold), p.stats,
                            takedown=versions.takedown_set("."))
