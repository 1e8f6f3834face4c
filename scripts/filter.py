"""Snakemake entry: audit checks and content policy."""
from trainset import versions
from trainset.stages import filter as filter_stage

i, p = snakemake.input, snakemake.params
filter_stage.run(
    {"ingest": i.ingest, "ingest_shards": list(i.ingest_shards), "audit": i.audit, "groups": i.groups, "nsfw": i.nsfw},
    snakemake.output.kept,
    snakemake.output.rejected,
    audit_params=dict(p.audit),
    policy_params=dict(p.policy),
    tag_dictionaries=list(i.dictionaries),
    annotation_files=list(i.annotations),
    overrides_file=i.overrides[0] if i.overrides else None,
    takedown=versions.takedown_set("."),
    kept=p.kept,
)
