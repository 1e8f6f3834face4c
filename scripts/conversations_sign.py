"""Snakemake entry: one shard's MinHash signatures, for the dedup job to look up."""
from trainset.conversations import stages

stages.sign_shard(snakemake.input[0], snakemake.output[0], dict(snakemake.params.dedup), threads=snakemake.threads)
