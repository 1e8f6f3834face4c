rule export:
    input:
        SPLIT,
    output:
        directory(EXPORT),
    params:
        export=config["export"],
        caption=config["caption"],
        triggers={s.name: s.trigger_word for s in SOURCES},
        seed=config["seed"],
        code=CODE,
    script:
        "../scripts/export.py"
