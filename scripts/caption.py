"""Snakemake entry: captions from tags."""
from trainset.stages import caption

c = snakemake.params.caption
caption.run(snakemake.input[0], snakemake.output[0], c.get("trigger_word", ""), c.get("underscores_to_spaces", True), c.get("separator", ", "))
