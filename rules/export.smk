rule export:
    input:
        SPLIT,
    output:
        directory(EXPORT),
    params:
        path=EXPORT,  # the export's path in the workflow, for dataset_config.toml (S3 storage: not the job's local copy)
        export=config["export"],
        caption=config["caption"],
        triggers={s.name: s.trigger_word for s in SOURCES},
        seed=config["seed"],
        code=CODE,
    resources:
        **STEP_RESOURCES,
    script:
        "../scripts/export.py"
