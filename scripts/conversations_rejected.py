"""Snakemake entry: the one conversation rejected manifest, and the ledger that proves nothing was lost."""
from trainset import manifest, schemas
from trainset.conversations import stages

rejected = stages.merge_rejected(list(snakemake.input.parts), snakemake.output[0])
read = stages.load(list(snakemake.input.read))
kept = manifest.read(snakemake.input.kept, schemas.CONVERSATIONS_SPLIT)
stages.ledger(set(read["id"]), int((rejected["stage"] == "read").sum()), kept, rejected)
