# raw: the demo source and the ingest manifest of every source.
from trainset.sources import source_fingerprint


rule demo:
    output:
        directory("data/raw/demo"),
    params:
        enabled=DEMO,  # with demo: false the folder is left empty (DVC still tracks it)
        code=provenance.code_digest("demo"),
    script:
        "../scripts/demo.py"


rule ingest:
    input:
        ["data/raw/demo"] if DEMO else [],
    output:
        ingest=INGEST,
        unmatched=UNMATCHED,
    params:
        sources=[s.as_dict() for s in SOURCES],
        built=[s.name for s in SOURCES if s.built_by_workflow],
        # user folders are not rule outputs: their listing (paths, sizes, mtimes) triggers reruns
        fingerprints={s.name: source_fingerprint(s, config["ingest"]["extensions"]) for s in SOURCES if not s.built_by_workflow},
        extensions=config["ingest"]["extensions"],
        stat_cache=f"{CACHE}/stat",
        code=CODE,
    script:
        "../scripts/ingest.py"
