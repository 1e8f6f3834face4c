rule export:
    input:
        SPLIT,
    output:
        directory(EXPORT),
    params:
        export=config["export"],
        trigger_word=config["caption"]["trigger_word"],
        seed=config["seed"],
        code=CODE,
    script:
        "../scripts/export.py"
