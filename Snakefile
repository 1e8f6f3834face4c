# trainset workflow: raw -> audited -> filtered -> deduped -> captioned -> split -> exported -> reported
# (images), and raw -> read -> filtered -> deduped -> split and staged -> exported -> reported (conversations)
# Run from the repository root: snakemake --cores all

from trainset import config as ts_config
from trainset import distributions
from trainset import provenance

configfile: "params.yaml"

SOURCES = ts_config.sources_from_params(config, ".")
DEMO = bool(config.get("demo", False))
# Snakemake's code trigger sees scripts, not the library: pass the library's digest as a param.
CODE = provenance.code_digest()

include: "rules/common.smk"
include: "rules/raw.smk"
include: "rules/audit.smk"
include: "rules/filter.smk"
include: "rules/dedup.smk"
include: "rules/caption.smk"
include: "rules/split.smk"
include: "rules/export.smk"
include: "rules/report.smk"
include: "rules/conversations.smk"


rule all:
    input:
        "data/export",
        REPORT,
        METRICS,
        HTML_REPORT,
        PLOT_FILES,
        CONV_EXPORT,
        CONV_REPORT,
        CONV_METRICS,


onsuccess:
    provenance.write_run_info("data/run/run-info.json", config)
