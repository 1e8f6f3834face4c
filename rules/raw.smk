# raw: the demo source and the ingest manifest of every source.
from trainset.sources import materialize as ts_materialize
from trainset.sources import source_fingerprint


rule demo:
    output:
        local(directory("data/raw/demo")),
    params:
        enabled=DEMO,  # with demo: false the folder is left empty (DVC still tracks it)
        code=provenance.code_digest("demo"),
    resources:
        **STEP_RESOURCES,
    script:
        "../scripts/demo.py"


MATERIALIZED = {s.name: s for s in SOURCES if s.kind in ts_config.MATERIALIZED_KINDS}


def materialized_input(source):
    """What an unpacked or downloaded source's folder stands for: its done mark."""
    if source.kind == "url_list":
        return local(f"{ts_config.MATERIALIZED_DIR}/_downloads/{source.name}.json")
    return local(f"{ts_config.MATERIALIZED_DIR}/{source.name}")


rule materialize:
    input:
        lambda w: [local(str(p)) for p in ts_materialize.inputs(MATERIALIZED[w.name])],
    output:
        local(directory(f"{ts_config.MATERIALIZED_DIR}/{{name}}")),
    wildcard_constraints:
        name="[^/]+",
    params:
        source=lambda w: MATERIALIZED[w.name].as_dict(),
        limits=config["ingest"].get("archive_limits") or {},
        report=lambda w: f"{RUN}/materialize-{w.name}.json",
        code=CODE,
    resources:
        **STEP_RESOURCES,
    script:
        "../scripts/materialize.py"


rule download:
    input:
        lambda w: local(str(MATERIALIZED[w.name].path)),
    output:
        local(f"{ts_config.MATERIALIZED_DIR}/_downloads/{{name}}.json"),
    params:
        source=lambda w: MATERIALIZED[w.name].as_dict(),
        folder=lambda w: str(MATERIALIZED[w.name].folder),
        network=config.get("network") or {},
        code=CODE,
    resources:
        **STEP_RESOURCES,
    script:
        "../scripts/download.py"


rule ingest:
    input:
        [local("data/raw/demo")] if DEMO else [],
        [materialized_input(s) for s in MATERIALIZED.values()],
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
    resources:
        **STEP_RESOURCES,
    script:
        "../scripts/ingest.py"
